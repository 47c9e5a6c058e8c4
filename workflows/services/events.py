"""Accept events and match them to workflows."""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import notify
from ..events import bus
from ..events.envelope import Envelope, to_structured
from ..expressions import ExpressionError, evaluate
from ..models import DeadLetter, Event, Run, TriggerSubscription
from .definitions import definition_for
from .producers import allowed_subscriptions, correlation_extensions
from .schemas import SchemaCheck, SchemaViolation, check_event_data

__all__ = ["SchemaViolation", "ingest_event", "match_event"]

log = logging.getLogger("signalbox.ingest")


def ingest_event(
    *,
    envelope: Envelope,
    channel: str = "http",
    check: SchemaCheck | None = None,
    publish: bool = True,
    off_bus: bool = False,
) -> tuple[Event, bool]:
    """Store the event (unique on source + id) and put it on the bus after commit.

    Returns (event, created). A repeat of an accepted event returns the stored one with
    created=False and starts nothing. Raises SchemaViolation when the data breaks its
    type's schema (pass `check` when it was already done). Once this returns outside a
    transaction the row is committed: if Redis is down the outbox relay delivers it later.
    `off_bus` stores an event that must never reach the bus (a try run's sample: its run is
    started directly, no trigger or waiting run may hear of it), marked delivered so the
    relays leave it alone.
    """
    check = check or check_event_data(envelope)
    # Every event gets a correlation id (its own id starts a new conversation) and a
    # causation id (what directly caused it; for an outside event, itself); a malformed
    # W3C traceparent is dropped.
    extensions = correlation_extensions(envelope.extensions, event_id=envelope.id)
    correlation = extensions["correlationid"]
    try:
        with transaction.atomic():
            event = Event.objects.create(
                source=envelope.source,
                ce_id=envelope.id,
                type=envelope.type,
                subject=envelope.subject,
                specversion=envelope.specversion,
                time=envelope.time,
                datacontenttype=envelope.datacontenttype,
                dataschema=envelope.dataschema,
                data=envelope.data,
                data_is_base64=envelope.data_is_base64,
                extensions=extensions,
                correlation_id=correlation,
                causation_id=str(extensions["causationid"]),
                validation=check.validation,
                schema_version=check.version,
                channel=channel,
                published_at=timezone.now() if off_bus else None,
                matched_at=timezone.now() if off_bus else None,
            )
            if off_bus:
                return event, True
            if publish:  # else the caller publishes after its commit (batches: one trip)
                transaction.on_commit(lambda: bus.publish(event))
            notify.event_ingested(event=event)
    except IntegrityError:
        existing = Event.objects.filter(source=envelope.source, ce_id=envelope.id).first()
        if existing is None:
            raise
        return existing, False
    return event, True


def match_event(*, event_id: int) -> list[Run]:
    """Start (or queue) a run of every published workflow whose trigger takes this event,
    and hand it to runs waiting for it.

    Idempotent: a run per (event, workflow) is unique, so a re-delivered bus entry starts
    nothing new (and a waiting step is resumed once: its result is fenced).
    """
    from .run_control import admit
    from .waits import deliver_to_waiters

    event = Event.objects.filter(pk=event_id).first()
    if event is None:
        log.warning("bus entry names event %s, which is not in the store", event_id)
        return []
    deliver_to_waiters(event)
    started = []
    subscriptions = TriggerSubscription.objects.filter(event_type=event.type).select_related(
        "workflow", "version"
    )
    # Loop guards: a workflow's own run events never start it; deep causation chains stop.
    for subscription in allowed_subscriptions(event, subscriptions):
        if not trigger_accepts(subscription.version, event):
            continue
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    workflow=subscription.workflow,
                    version=subscription.version,
                    event=event,
                    correlation_id=event.correlation_id,
                    partition_key=str(
                        (event.extensions or {}).get("partitionkey") or event.subject or ""
                    ),
                )
                admit(run)
        except IntegrityError:
            continue  # already matched by an earlier delivery
        started.append(run)
    mark_matched(event.pk)
    return started


def mark_matched(event_id: int) -> None:
    """Before the bus entry is acknowledged: an event left unmatched once its partition is
    drained was lost from the bus, and the relay publishes it again."""
    Event.objects.filter(pk=event_id, matched_at__isnull=True).update(matched_at=timezone.now())


def trigger_accepts(version, event: Event) -> bool:
    """True when one of the version's triggers for this type has no filter or a filter
    that is true for the event. A filter that fails to evaluate does not match (logged)."""
    triggers = [t for t in definition_for(version).triggers if t.event == event.type]
    if not triggers or any(not t.filter for t in triggers):
        return True
    structured = to_structured(event)
    for trigger in triggers:
        try:
            if evaluate(trigger.filter, {"event": structured}, where="trigger filter") is True:
                return True
        except ExpressionError as exc:
            log.warning("event %s: %s", event.pk, exc)
    return False


def dead_letter_bus_entry(*, event_id: int, reason: str, stream: str, entry_id: str) -> None:
    with transaction.atomic():
        DeadLetter.objects.create(
            kind="bus",
            reason=reason,
            payload={"stream": stream, "entry_id": entry_id, "event_id": event_id},
            event=Event.objects.filter(pk=event_id).first(),
        )
        mark_matched(event_id)  # decided: the dead letter holds it; the relay must not resend
