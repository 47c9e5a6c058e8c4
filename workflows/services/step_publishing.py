"""What the `publish` step needs from the database (steps never touch the ORM): the
CloudEvent it sends, caused by its run, and the broker connection it names."""

from __future__ import annotations

from django.utils import timezone

from ..events.connectors.base import ConnectionConfig, InvalidConnection
from ..events.envelope import Envelope, check_storable
from ..models import Connection, Run, StepRun
from .secrets import secret_values
from .waits import _caused_by


def event_for_step(*, run: Run, step_run: StepRun, config: dict) -> Envelope:
    """The CloudEvent a publishing step sends, built like emit_event's: its id is the
    attempt's idempotency key (the same on every attempt, so receivers and brokers that
    dedupe by id see one), with the run's correlation, causation and trace context.
    Raises InvalidEvent when a rendered attribute cannot be sent."""
    extensions = _caused_by(run)
    if config.get("partitionkey"):
        extensions["partitionkey"] = config["partitionkey"]
    envelope = Envelope(
        id=step_run.idempotency_key,
        source=config.get("source") or f"/signalbox/runs/{run.idempotency_base or run.pk}",
        type=config["type"],
        subject=config.get("subject", ""),
        time=timezone.now(),
        datacontenttype="application/json",
        data=config.get("data"),
        extensions=extensions,
    )
    check_storable(envelope)  # the same limits as an event stored here
    return envelope


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
