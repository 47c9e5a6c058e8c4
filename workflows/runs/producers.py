"""Events Signalbox produces itself, and the rules that keep them from looping.

A run's start and finish are ingested as CloudEvents (`signalbox.run.started|succeeded|
failed|cancelled`) in the same transaction as the run's state change, so the event exists
exactly when the new state does. They continue the triggering event's conversation: same
correlation id, causation id = the triggering event's id, and the same W3C `traceparent`.

Every event a run produces (its run events, what its `emit_event` steps publish, a
`sub_workflow` step's trigger event) names the run's workflow in the `sbworkflow` extension
and arrives on the `run` channel: that is how the event store knows whose it is (see
workflows.queries.events.hidden_events).

Two guards stop workflows from feeding each other forever:
- a workflow's own run event (`signalbox.run.*` carrying `sbworkflow=<slug>`) never starts
  a run of that workflow;
- an event `sbdepth` steps down a causation chain starts nothing once the depth reaches
  MAX_CAUSATION_DEPTH (the cut is recorded as a dead letter so it can be seen).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from workflows.catalog.models import TriggerSubscription
from workflows.core import engine
from workflows.core.lineage import (
    DEFAULT_MAX_CAUSATION_DEPTH,
    DEPTH_EXTENSION,
    RUN_EXTENSION,
    RUN_SOURCE,
    RUN_TYPE_PREFIX,
    TRACEPARENT,
    WORKFLOW_EXTENSION,
    causation_depth,
    correlation_extensions,
    emitting_workflow,
    valid_traceparent,
)
from workflows.events import bus
from workflows.events.envelope import Envelope, envelope_json
from workflows.events.intake import new_event, send_new
from workflows.events.models import DeadLetter, Event
from workflows.events.schemas import SchemaViolation, check_event_data
from workflows.infra import flow_counters
from workflows.live import notify
from workflows.runs.models import Run

# Re-exported: the names callers have always read here.
__all__ = [
    "DEFAULT_MAX_CAUSATION_DEPTH",
    "DEPTH_EXTENSION",
    "RUN_EXTENSION",
    "RUN_SOURCE",
    "RUN_TYPE_PREFIX",
    "TRACEPARENT",
    "WORKFLOW_EXTENSION",
    "allowed_subscriptions",
    "causation_depth",
    "correlation_extensions",
    "emit_run_event",
    "emit_run_events",
    "emitting_workflow",
    "envelope_json",
    "run_event_envelope",
    "store_run_events",
    "valid_traceparent",
]

log = logging.getLogger("signalbox.producers")


def max_causation_depth() -> int:
    return int(settings.SIGNALBOX.get("MAX_CAUSATION_DEPTH", DEFAULT_MAX_CAUSATION_DEPTH))


def allowed_subscriptions(
    event: Event, subscriptions: Iterable[TriggerSubscription]
) -> list[TriggerSubscription]:
    """The subscriptions this event may start runs for, after the loop guards."""
    candidates = list(subscriptions)
    # Only run events: an emit_event step may start its own workflow again (the depth guard
    # bounds that), as it could before emitted events carried sbworkflow.
    emitter = (
        (event.extensions or {}).get(WORKFLOW_EXTENSION)
        if event.type.startswith(RUN_TYPE_PREFIX)
        else None
    )
    allowed = [s for s in candidates if s.workflow.slug != emitter]
    depth = causation_depth(event)
    if allowed and depth >= max_causation_depth():
        reason = (
            f"causation chain is {depth} deep (limit {max_causation_depth()}): "
            f"{event.type} starts no run of {', '.join(s.workflow.slug for s in allowed)}"
        )
        log.warning("event %s: %s", event.pk, reason)
        # The bus delivers at least once: record the cut once per event.
        if not DeadLetter.objects.filter(kind="event", event=event).exists():
            DeadLetter.objects.create(
                kind="event",
                reason=reason,
                event=event,
                payload={
                    "guard": "causation-depth",
                    "depth": depth,
                    "limit": max_causation_depth(),
                    "workflows": [s.workflow.slug for s in allowed],
                    "correlation_id": event.correlation_id,
                },
            )
            transaction.on_commit(lambda: flow_counters.count_dead_letter(event))
        return []
    return allowed


def run_event_envelope(run: Run, status: str) -> Envelope:
    trigger = run.event
    extensions: dict[str, Any] = {
        WORKFLOW_EXTENSION: run.workflow.slug,
        RUN_EXTENSION: run.pk,
        DEPTH_EXTENSION: (causation_depth(trigger) if trigger else 0) + 1,
    }
    if run.correlation_id:
        extensions["correlationid"] = run.correlation_id
    if trigger is not None:
        extensions["causationid"] = trigger.ce_id
        traceparent = (trigger.extensions or {}).get(TRACEPARENT)
        if valid_traceparent(traceparent):
            extensions[TRACEPARENT] = traceparent
    return Envelope(
        id=f"run-{run.pk}-{status}",
        source=RUN_SOURCE,
        type=f"{RUN_TYPE_PREFIX}{status}",
        subject=run.workflow.slug,
        time=timezone.now(),
        datacontenttype="application/json",
        data={
            "run": run.pk,
            "workflow": run.workflow.slug,
            "version": run.version.number,
            "status": status,
            "error": run.error,
            "event": run.event_id,
        },
        extensions=extensions,
    )


def emit_run_events(*, run: Run, commands: Iterable[engine.Command]) -> None:
    """Ingest the events for the run moves in `commands`. Called by `advance_locked` inside
    the run's transaction, after the run's new status is set."""
    for command in commands:
        if isinstance(command, engine.MarkRunRunning):
            emit_run_event(run=run, status="started")
        elif isinstance(command, engine.FinishRun):
            emit_run_event(run=run, status=str(command.status))


def emit_run_event(*, run: Run, status: str) -> Event | None:

    envelope = run_event_envelope(run, status)
    try:
        check = check_event_data(envelope)
    except SchemaViolation as exc:
        # Someone registered a schema for signalbox.run.* that our events break: the run
        # must still move, so the event is kept as a dead letter instead.
        DeadLetter.objects.create(
            kind="event",
            reason=f"run event does not match its schema: {exc}",
            run=run,
            payload={"channel": "run", "errors": exc.errors, "cloudevent": envelope_json(envelope)},
        )
        return None
    event = new_event(envelope, check, "run")
    # The event flow map counts the run when this event is published, on its trigger's edge.
    flow_counters.mark_run_event(event, origin=run.origin, trigger=run.event)
    unsaved = getattr(run, "_unsaved_events", None)
    if unsaved is not None:  # inside runs.one_run_write: stored with the others at its end
        unsaved.append(event)
        return event
    store_run_events(run, [event])
    return event if event.pk is not None else None


def store_run_events(run: Run, events: list[Event]) -> None:
    """INSERT a run's events in one statement, in the run's transaction, and publish them
    after commit. No savepoint: an (source, id) already taken (only a forged event could
    hold one: a run reaches each status once) is skipped, as `ingest_event` skips a repeat.
    A caller that starts many runs at once (the bus consumer) collects them in the run's
    `_outbox` and publishes its read's together: one round trip, not one per event."""
    send_run_events(run, events)()


def send_run_events(run: Run, events: list[Event]) -> Callable[[], None]:
    """`store_run_events` in two halves, for a caller that sends the INSERT in a pipeline
    with the run's other writes (runs.advance.one_run_write): the INSERT goes now; the
    function returned, called after the pipeline's block, does the rest."""
    if not events:
        return lambda: None
    give_ids = send_new(events)

    def rest() -> None:
        give_ids()
        _after_stored(run, events)

    return rest


def _after_stored(run: Run, events: list[Event]) -> None:
    for event in events:
        if event.pk is None:
            log.warning("run event %s %s was already stored", event.source, event.ce_id)
    created = [event for event in events if event.pk is not None]
    if not created:
        return
    outbox: list[Event] | None = getattr(run, "_outbox", None)
    if outbox is not None:
        outbox.extend(created)
    else:
        transaction.on_commit(lambda: bus.publish_many(created), robust=True)
    transaction.on_commit(lambda: notify.events_ingested(events=created))
