"""What the steps that send events out (`publish`, `emit_event`'s `to`) need from the
database (steps never touch the ORM): the CloudEvent they send, caused by the run, and the
broker connections they name."""

from __future__ import annotations

from workflows.access.secrets import secret_values
from workflows.events.connectors.base import ConnectionConfig, InvalidConnection
from workflows.events.envelope import Envelope, check_storable
from workflows.events.models import Connection, Event
from workflows.runs.models import Run, StepRun
from workflows.runs.waits import outgoing_event


def event_for_step(*, run: Run, step_run: StepRun, config: dict) -> Envelope:
    """The CloudEvent a publishing step sends, built as emit_event's is (waits.outgoing_event),
    within the limits of an event stored here. Raises InvalidEvent when a rendered attribute
    cannot be sent."""
    envelope = outgoing_event(run=run, step_run=step_run, config=config)
    check_storable(envelope)
    return envelope


def stored_envelope(*, event_id: int) -> Envelope:
    """A stored event as it was accepted: what emit_event sends on to its destinations."""
    event = Event.objects.get(pk=event_id)
    return Envelope(
        id=event.ce_id,
        source=event.source,
        type=event.type,
        specversion=event.specversion,
        subject=event.subject,
        time=event.time,
        datacontenttype=event.datacontenttype,
        dataschema=event.dataschema,
        data=event.data,
        data_is_base64=event.data_is_base64,
        extensions=dict(event.extensions or {}),
    )


def sink_config(*, name: str) -> ConnectionConfig:
    """The named connection, with its password, for a sink. Raises InvalidConnection."""
    row = Connection.objects.filter(name=name).first()
    if row is None:
        raise InvalidConnection(f"no connection named {name!r}")
    if not row.enabled:
        raise InvalidConnection(f"the connection {name!r} is disabled")
    password = ""
    if row.password_secret:
        password = secret_values(names=[row.password_secret]).get(row.password_secret, "")
    return ConnectionConfig(
        name=row.name,
        kind=row.kind,
        url=row.url,
        username=row.username,
        password=password,
        options=row.options,
        default_type=row.default_type,
    )
