"""Events Signalbox produces itself, and the rules that keep them from looping.

A run's start and finish are ingested as CloudEvents (`signalbox.run.started|succeeded|
failed|cancelled`) in the same transaction as the run's state change, so the event exists
exactly when the new state does. They continue the triggering event's conversation: same
correlation id, causation id = the triggering event's id, and the same W3C `traceparent`.

Every event a run produces (its run events, what its `emit_event` steps publish, a
`sub_workflow` step's trigger event) names the run's workflow in the `sbworkflow` extension
and arrives on the `run` channel: that is how the event store knows whose it is (see
workflows.event_selectors.hidden_events).

Two guards stop workflows from feeding each other forever:
- a workflow's own run event (`signalbox.run.*` carrying `sbworkflow=<slug>`) never starts
  a run of that workflow;
- an event `sbdepth` steps down a causation chain starts nothing once the depth reaches
  MAX_CAUSATION_DEPTH (the cut is recorded as a dead letter so it can be seen).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import engine
from ..events.envelope import Envelope
from ..models import DeadLetter, Event, Run, TriggerSubscription
from .schemas import SchemaViolation, check_event_data

log = logging.getLogger("signalbox.producers")

RUN_SOURCE = "/signalbox/runs"
RUN_TYPE_PREFIX = "signalbox.run."
# CloudEvents extension names: 1-20 lowercase letters or digits.
WORKFLOW_EXTENSION = "sbworkflow"
DEPTH_EXTENSION = "sbdepth"
RUN_EXTENSION = "sbrun"
TRACEPARENT = "traceparent"
DEFAULT_MAX_CAUSATION_DEPTH = 8

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex. Versions above 00 may
# append fields; version ff is forbidden; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def max_causation_depth() -> int:
    return int(settings.SIGNALBOX.get("MAX_CAUSATION_DEPTH", DEFAULT_MAX_CAUSATION_DEPTH))


def valid_traceparent(value: object) -> bool:
    if not isinstance(value, str):
        return False
    found = _TRACEPARENT.match(value)
    if not found:
        return False
    version, trace_id, parent_id, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return False
    return trace_id != "0" * 32 and parent_id != "0" * 16


def correlation_extensions(extensions: dict[str, Any], *, event_id: str) -> dict[str, Any]:
    """Extensions with `correlationid` and `causationid` filled in when absent (an outside
    event starts its own conversation and caused itself), and `traceparent` kept only when
    it is well formed: W3C Trace Context says a receiver that cannot parse it starts a
    new trace rather than propagating garbage."""
    out = dict(extensions)
    out["correlationid"] = str(out.get("correlationid") or event_id)
    out["causationid"] = str(out.get("causationid") or event_id)
    if TRACEPARENT in out and not valid_traceparent(out[TRACEPARENT]):
        log.warning("event %s: dropping malformed traceparent %r", event_id, out[TRACEPARENT])
        del out[TRACEPARENT]
    return out


def emitting_workflow(event: Event) -> str | None:
    """The slug of the workflow whose run produced `event`, as the event says: the
    `sbworkflow` extension of an event on the `run` channel (only Signalbox itself ingests
    on that channel, so an outside producer cannot claim a workflow's events). None for
    everything else, and for events emitted by steps before they carried the extension."""
    if event.channel != "run":
        return None
    slug = (event.extensions or {}).get(WORKFLOW_EXTENSION)
    return slug if isinstance(slug, str) and slug else None


def causation_depth(event: Event) -> int:
    try:
        return max(0, int((event.extensions or {}).get(DEPTH_EXTENSION, 0)))
    except (TypeError, ValueError):
        return 0


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
    from .event_intake import new_event  # event_intake imports us

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
    from .. import notify  # notify imports us
    from ..events import bus
    from .event_intake import insert_new

    if not events:
        return
    insert_new(events)
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


def envelope_json(envelope: Envelope) -> dict[str, Any]:
    """A structured CloudEvent dict of an envelope, for dead-letter payloads."""
    out: dict[str, Any] = {
        "specversion": envelope.specversion,
        "id": envelope.id,
        "source": envelope.source,
        "type": envelope.type,
    }
    if envelope.subject:
        out["subject"] = envelope.subject
    if envelope.time:
        out["time"] = envelope.time.isoformat().replace("+00:00", "Z")
    if envelope.datacontenttype:
        out["datacontenttype"] = envelope.datacontenttype
    if envelope.dataschema:
        out["dataschema"] = envelope.dataschema
    out.update(envelope.extensions)
    out["data_base64" if envelope.data_is_base64 else "data"] = envelope.data
    return out
