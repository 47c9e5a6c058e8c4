"""Broker messages into the ingest path: one transaction per batch, then the acks.

Every message of a batch is stored as an event (or, when it cannot be one, as a dead letter
of kind "event") inside one transaction; only after it commits are the messages
acknowledged. A crash between the commit and the ack makes the broker deliver them again,
and dedupe on (source, id) makes that redelivery store nothing new.
"""

from __future__ import annotations

import logging

from django.db import DataError, InterfaceError, OperationalError, transaction

from workflows.events import bus
from workflows.events.connectors.base import Message
from workflows.events.connectors.binding import envelope_from_message
from workflows.events.envelope import InvalidEvent
from workflows.events.models import DeadLetter
from workflows.infra import tracing
from workflows.live import notify

log = logging.getLogger("signalbox.connectors")

DATABASE_DOWN = (OperationalError, InterfaceError)


def quarantine(message: Message, *, kind: str, connection: str, reason: str, problems=None):
    """Keep a message that cannot become an event, with the reason and its raw content.
    Idempotent: a redelivery of a message already quarantined adds nothing."""
    ident = message.fallback_id or ""
    body = message.body.decode("utf-8", "backslashreplace")
    payload = {
        "channel": "connector",
        "kind": kind,
        "connection": connection,
        "key": message.key,
        "message_id": ident,
        "content_type": message.content_type,
        "attributes": message.attributes,
        "body": body[:65536],
        "problems": problems or [],
    }
    if ident:
        existing = DeadLetter.objects.filter(
            kind="event",
            payload__channel="connector",
            payload__connection=connection,
            payload__message_id=ident,
        ).first()
        if existing:
            return existing
    return DeadLetter.objects.create(kind="event", reason=reason[:2000], payload=payload)


def ingest_message(message: Message, *, kind: str, connection: str, default_type: str) -> str:
    """ "ingested", "duplicate" or "quarantined"; database outages propagate."""
    from workflows.events.intake import ingest_event
    from workflows.events.schemas import SchemaViolation

    where = {"kind": kind, "connection": connection}
    try:
        envelope = envelope_from_message(message, default_type=default_type, **where)
        traced = traced_message(envelope, **where)
        try:
            with transaction.atomic():  # a savepoint: a refused row spoils nothing else
                _event, created = ingest_event(
                    envelope=envelope, channel="connector", trace=traced.traceparent
                )
        except Exception as exc:
            traced.end(error=type(exc).__name__)
            raise
        traced.end(stored=int(created))
    except InvalidEvent as exc:
        quarantine(message, reason=f"invalid CloudEvent: {exc}", problems=exc.problems, **where)
        return "quarantined"
    except SchemaViolation as exc:
        quarantine(
            message,
            reason=f"data does not match its schema: {exc}",
            problems=[{"schema_version": exc.version, **e} for e in exc.errors],
            **where,
        )
        return "quarantined"
    except DataError as exc:  # a value the database refuses (e.g. NUL in text)
        quarantine(message, reason=f"the database refused the event: {exc}", **where)
        return "quarantined"
    return "ingested" if created else "duplicate"


def ingest_batch(
    messages: list[Message], *, kind: str, connection: str, default_type: str
) -> list[str]:
    """Store a batch in one commit, then put its new events on the bus in one round trip;
    returns each message's outcome. Raises on a database outage (nothing is committed,
    nothing may be acknowledged).

    The events go in with one INSERT (events.intake.store, as HTTP batches do), their
    ids in the order received, so per-key order survives; each message is its own submission,
    so a schema violation refuses that message alone. Should the INSERT itself be refused (a
    value the database cannot hold), the batch is stored message by message instead, which
    dead-letters the culprit only."""
    from workflows.events import intake as event_intake

    where = {"kind": kind, "connection": connection}
    outcomes: list[str | None] = [None] * len(messages)
    submissions: dict[int, event_intake.Submission] = {}
    traces: dict[int, tracing.Ingest] = {}
    refused: dict[int, InvalidEvent] = {}
    for index, message in enumerate(messages):
        try:
            envelope = envelope_from_message(message, default_type=default_type, **where)
        except InvalidEvent as exc:
            refused[index] = exc
            continue
        traces[index] = traced_message(envelope, **where)
        submissions[index] = event_intake.Submission(
            [envelope], channel="connector", trace=traces[index].traceparent
        )
    try:
        with transaction.atomic():
            created = event_intake.store(list(submissions.values()), in_order=True)
            for index, exc in refused.items():
                quarantine(
                    messages[index],
                    reason=f"invalid CloudEvent: {exc}",
                    problems=exc.problems,
                    **where,
                )
                outcomes[index] = "quarantined"
            for index, submission in submissions.items():
                if isinstance(submission.error, event_intake.SchemaViolations):
                    _index, violation = submission.error.found[0]
                    quarantine(
                        messages[index],
                        reason=f"data does not match its schema: {violation}",
                        problems=[
                            {"schema_version": violation.version, **e} for e in violation.errors
                        ],
                        **where,
                    )
                    outcomes[index] = "quarantined"
                else:
                    outcomes[index] = (
                        "duplicate" if submission.accepted[0].duplicate else "ingested"
                    )
    except DataError:
        _end_all(traces, error="DataError")  # each message is tried again on its own
        return _one_by_one(messages, **where, default_type=default_type)
    except Exception as exc:
        _end_all(traces, error=type(exc).__name__)
        raise
    # Committed: onto the bus in one round trip (the outbox relay covers a failure).
    bus.publish_many(created)
    notify.events_ingested(events=created)
    for index, traced in traces.items():
        outcome = outcomes[index]
        traced.end(
            stored=int(outcome == "ingested"),
            error="quarantined" if outcome == "quarantined" else "",
        )
    return [outcome or "quarantined" for outcome in outcomes]


def traced_message(envelope, *, kind: str, connection: str) -> tracing.Ingest:
    """A message's ingest span: a consumer span continuing the trace its CloudEvents
    distributed-tracing extension names (a new trace when it names none)."""
    return tracing.ingest(
        [envelope],
        channel="connector",
        kind="CONSUMER",
        attributes={"messaging.system": kind, "signalbox.connection": connection},
    )


def _end_all(traces: dict[int, tracing.Ingest], *, error: str) -> None:
    for traced in traces.values():
        traced.end(error=error)


def _one_by_one(messages: list[Message], *, kind, connection, default_type) -> list[str]:
    with transaction.atomic():
        return [
            ingest_message(m, kind=kind, connection=connection, default_type=default_type)
            for m in messages
        ]
