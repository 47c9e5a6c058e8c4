"""Match accepted events to workflows: start their runs, hand them to waiting steps.

(`ingest_event`, which accepts one, lives in event_intake and is re-exported here.)
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from workflows.catalog.definition_parsing import definition_for
from workflows.catalog.models import TriggerSubscription
from workflows.core import engine
from workflows.core.expressions import ExpressionError, bind, evaluate
from workflows.core.states import RunStatus
from workflows.events import bus
from workflows.events.envelope import to_structured
from workflows.events.intake import ingest_event
from workflows.events.models import DeadLetter, Event
from workflows.events.schemas import SchemaViolation, unschemed_types_remembered
from workflows.infra import flow_counters, tracing
from workflows.runs.advance import Continuation, one_run_write
from workflows.runs.control import admit
from workflows.runs.execution import Budget, run_kept_steps
from workflows.runs.models import EventWaiter, Run
from workflows.runs.producers import allowed_subscriptions
from workflows.runs.waits import deliver_to_waiters

__all__ = ["MatchOutcome", "SchemaViolation", "ingest_event", "match_event", "match_events"]

log = logging.getLogger("signalbox.ingest")


def match_event(*, event_id: int) -> list[Run]:
    """Start (or queue) a run of every published workflow whose trigger takes this event,
    and hand it to runs waiting for it.

    Idempotent: a run per (event, workflow) is unique, so a re-delivered bus entry starts
    nothing new (and a waiting step is resumed once: its result is fenced). Raises what
    matching raised (the event is then left unmatched).
    """
    outcome = match_events(event_ids=[event_id])
    for error in outcome.failed.values():
        raise error
    return outcome.started


@dataclass
class MatchOutcome:
    """What `match_events` did: the events it settled (matched, or not in the store: either
    way their bus entries may be acknowledged), the runs it started, and the events whose
    matching raised (left unmatched, so their entries stay pending and are retried)."""

    done: set[int] = field(default_factory=set)
    started: list[Run] = field(default_factory=list)
    failed: dict[int, Exception] = field(default_factory=dict)


def match_events(
    *,
    event_ids: Sequence[int],
    inline: Budget | None = None,
    traces: Mapping[int, str] | None = None,
) -> MatchOutcome:
    """`match_event` for the entries of one bus read, with a fixed number of queries per
    read besides each started run's own: one SELECT of the events, one of the
    subscriptions of their types (through the event_type index: never a scan of the
    workflows), one to learn which types have waiting runs, one UPDATE marking them matched.

    Each event is matched on its own: one that raises is left out of `done` and unmatched
    (retried, then dead-lettered, alone) while the others go on. Database outages
    (OperationalError, InterfaceError) are raised: every entry stays pending.

    With an `inline` budget (the bus consumer's), a started run's first step, when light,
    is run here in the transaction that creates the run, and the light steps after it
    while the budget lasts: no Celery hop for a light run. Other work goes to the queue.
    `traces` names the ingest span of events whose bus entries carried one (tracing).
    """

    outcome = MatchOutcome()
    wanted = list(dict.fromkeys(event_ids))
    if not wanted:
        return outcome
    events = Event.objects.in_bulk(wanted)
    for missing in (pk for pk in wanted if pk not in events):
        log.warning("bus entry names event %s, which is not in the store", missing)
        outcome.done.add(missing)  # nothing to match, nothing to retry
    if not events:
        return outcome
    types = sorted({event.type for event in events.values()})
    by_type: dict[str, list[TriggerSubscription]] = {t: [] for t in types}
    for subscription in TriggerSubscription.objects.filter(event_type__in=types).select_related(
        "workflow", "version"
    ):
        by_type[subscription.event_type].append(subscription)
    waited_for = waiting_types(types)
    with unschemed_types_remembered():  # the run events of this read share a few types
        matched = _match_each(wanted, events, by_type, waited_for, inline, outcome, traces)
    # The run events of the runs started (committed with them): on the bus in one round
    # trip (after the caller's own commit, if it holds a transaction). Were this process to
    # die first, the outbox relay would publish them.
    emitted = [e for run in outcome.started for e in getattr(run, "_outbox", ())]
    if emitted:
        transaction.on_commit(lambda: bus.publish_many(emitted), robust=True)
    if matched:
        mark_matched(*matched)
        outcome.done.update(matched)
    return outcome


def _match_each(
    wanted: list[int],
    events: dict[int, Event],
    by_type: dict[str, list[TriggerSubscription]],
    waited_for: set[str],
    inline: Budget | None,
    outcome: MatchOutcome,
    traces: Mapping[int, str] | None = None,
) -> list[int]:
    """Match the events one by one, in bus order (runs of one partition key start in
    order); the ids of those matched, the others' errors in `outcome.failed`."""
    matched: list[int] = []
    for pk in wanted:
        event = events.get(pk)
        if event is None:
            continue
        with tracing.delivery(event, traces.get(pk) if traces else None) as delivered:
            try:
                if event.type in waited_for:
                    deliver_to_waiters(event)
                outcome.started += _start_runs(event, by_type[event.type], inline)
            except (OperationalError, InterfaceError):
                raise
            except Exception as exc:
                log.exception("matching event %s failed; its entry stays pending", pk)
                outcome.failed[pk] = exc
                delivered.failed(f"matching failed: {type(exc).__name__}")
                continue
        matched.append(pk)
    return matched


def listened_types(types: Collection[str]) -> set[str]:
    """The types among `types` that a published workflow subscribes to or a run waits for
    right now, in one query: the bus consumer settles the entries of every other type
    without loading their events."""
    types = sorted(set(types))
    if not types:
        return set()
    subscribed = TriggerSubscription.objects.filter(event_type__in=types).values_list(
        "event_type", flat=True
    )
    waited = EventWaiter.objects.filter(
        event_type__in=types, expires_at__gt=timezone.now()
    ).values_list("event_type", flat=True)
    return set(subscribed.union(waited))


def waiting_types(types: Sequence[str]) -> set[str]:
    """The event types some run is waiting for right now (EventWaiter.event_type index)."""
    return set(
        EventWaiter.objects.filter(event_type__in=types, expires_at__gt=timezone.now())
        .values_list("event_type", flat=True)
        .distinct()
    )


def _start_runs(
    event: Event, subscriptions: list[TriggerSubscription], inline: Budget | None = None
) -> list[Run]:
    started = []
    if not subscriptions:
        return started
    filters = EventFilters(event)
    # Loop guards: a workflow's own run events never start it; deep causation chains stop.
    for subscription in allowed_subscriptions(event, subscriptions):
        if not trigger_accepts(subscription.version, event, filters=filters):
            continue
        kept = Continuation() if inline is not None and inline.left() else None
        started_span = tracing.run_span(workflow=subscription.workflow.slug)
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    workflow=subscription.workflow,
                    version=subscription.version,
                    event=event,
                    correlation_id=event.correlation_id,
                    traceparent=started_span.traceparent,
                    partition_key=str(
                        (event.extensions or {}).get("partitionkey") or event.subject or ""
                    ),
                )
                run._outbox = []  # type: ignore[attr-defined]  # its run events, see above
                with one_run_write(run):  # one UPDATE of the run, one journal INSERT
                    # A new run has no steps yet: its state need not be read.
                    fresh = engine.RunState(run.pk, RunStatus(run.status), {})
                    admit(run, continuation=kept, state=fresh)
                    if kept is not None and kept.step_run is not None:
                        # Committed with the run, or not at all (the entry is then
                        # retried): never a run whose kept step has no message.
                        run_kept_steps(run=run, kept=kept, budget=inline)
        except IntegrityError:
            continue  # already matched by an earlier delivery (its span is never ended)
        started_span.end(run)
        started.append(run)
    return started


def mark_matched(*event_ids: int) -> None:
    """Before the bus entries are acknowledged: an event left unmatched once its partition
    is drained was lost from the bus, and the relay publishes it again."""
    # COALESCE, not `matched_at IS NULL` in the WHERE clause: see bus.mark_published.
    Event.objects.filter(pk__in=event_ids).update(
        matched_at=Coalesce(F("matched_at"), Value(timezone.now()))
    )


class EventFilters:
    """Trigger filters over one event: the event is converted for CEL once, and each
    distinct filter is evaluated once, however many workflows listening to its type use it."""

    def __init__(self, event: Event):
        self.event = event
        self._context: dict | None = None
        self._bound: dict | None = None
        self._results: dict[str, bool] = {}

    def passes(self, expression: str) -> bool:
        """True when the filter is true for the event; a filter that fails to evaluate does
        not match (logged)."""
        if expression in self._results:
            return self._results[expression]
        if self._context is None:
            self._context = {"event": to_structured(self.event)}
            self._bound = bind(self._context)
        try:
            result = (
                evaluate(expression, self._context, where="trigger filter", bound=self._bound)
                is True
            )
        except ExpressionError as exc:
            log.warning("event %s: %s", self.event.pk, exc)
            result = False
        self._results[expression] = result
        return result


def trigger_accepts(version, event: Event, *, filters: EventFilters | None = None) -> bool:
    """True when one of the version's triggers for this type has no filter or a filter
    that is true for the event. A filter that fails to evaluate does not match (logged).
    Pass `filters` to share the event's conversion and results between versions."""
    triggers = [t for t in definition_for(version).triggers if t.event == event.type]
    if not triggers or any(not t.filter for t in triggers):
        return True
    filters = filters or EventFilters(event)
    return any(filters.passes(trigger.filter) for trigger in triggers)


def dead_letter_bus_entry(*, event_id: int, reason: str, stream: str, entry_id: str) -> None:
    event = Event.objects.filter(pk=event_id).first()
    with transaction.atomic():
        DeadLetter.objects.create(
            kind="bus",
            reason=reason,
            payload={"stream": stream, "entry_id": entry_id, "event_id": event_id},
            event=event,
        )
        # A failure on the event's edge of the live flow map.
        transaction.on_commit(lambda: flow_counters.count_dead_letter(event))
        mark_matched(event_id)  # decided: the dead letter holds it; the relay must not resend
