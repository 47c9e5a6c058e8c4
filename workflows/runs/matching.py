"""Match accepted events to workflows: start their runs, hand them to waiting steps.

(`ingest_event`, which accepts one, lives in event_intake and is re-exported here.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from workflows.catalog import subscription_cache
from workflows.catalog.definition_parsing import definition_for
from workflows.catalog.models import TriggerSubscription
from workflows.core import engine
from workflows.core.expressions import ExpressionError, bind, evaluate
from workflows.core.lineage import RUN_TYPE_PREFIX
from workflows.core.states import TERMINAL_RUN, RunStatus
from workflows.events import bus, stamps
from workflows.events.envelope import to_structured
from workflows.events.intake import ingest_event
from workflows.events.models import DeadLetter, Event, EventType
from workflows.events.schemas import (
    SchemaViolation,
    unschemed_types_remembered,
)
from workflows.infra import flow_counters, row_sql, tracing
from workflows.infra.sql_lists import among
from workflows.runs.advance import Continuation, one_run_write, send_later
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
    heard: Hearing | None = None,
) -> MatchOutcome:
    """`match_event` for the entries of one bus read, with a fixed number of queries per
    read besides each started run's own: one SELECT of the events, one of the
    subscriptions of their types (through the event_type index: never a scan of the
    workflows), one to learn which types have waiting runs (and which run event types have
    a schema), one UPDATE marking them matched. Given `heard` (the consumer asked it when
    it settled the unheard entries of the read) that says runs are to start and no wait
    to resume, the read is matched in one transaction, with one commit for all its runs
    (see `_match_in_one_transaction`); the waits are not asked again.

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
    matched: list[int] | None = None
    if heard is not None and heard.subscribed and not heard.waited:
        # The bus consumer's usual read: runs to start, no wait to resume.
        matched = _match_in_one_transaction(wanted, heard, inline, outcome, traces)
        at_once = matched is not None
    if matched is None:
        matched = _match_one_by_one(wanted, heard, inline, outcome, traces)
        at_once = False
    # The run events of the runs started (committed with them): on the bus in one round
    # trip (after the caller's own commit, if it holds a transaction). Were this process to
    # die first, the outbox relay would publish them.
    emitted = [e for run in outcome.started for e in getattr(run, "_outbox", ())]
    if emitted and at_once:
        # Marked published by the next read's UPDATE (or `flush_published_marks`): a
        # durable commit of its own per read would cost as much as the runs' own.
        transaction.on_commit(lambda: _append_marking_later(emitted), robust=True)
    elif emitted:
        transaction.on_commit(lambda: bus.publish_many(emitted), robust=True)
    outcome.done.update(matched)
    return outcome


class PublishedMarks:
    """Run events the consumer appended to the bus and has yet to mark published: the next
    read marks them in the UPDATE that marks its own events matched, as the group committer
    marks a group published in the next group's commit. A consumer that dies first leaves
    them to the outbox relay, which appends them again (matching is idempotent). Shared by
    the consumer's partition threads."""

    # Past this, they are marked on their own (reads of other kinds, but no empty one).
    PATIENCE_SECONDS = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[int] = []
        self._since = 0.0

    def add(self, event_ids: Iterable[int]) -> None:
        with self._lock:
            if not self._ids:
                self._since = time.monotonic()
            self._ids.extend(event_ids)

    @property
    def waiting(self) -> bool:
        return bool(self._ids)

    @property
    def overdue(self) -> bool:
        return bool(self._ids) and time.monotonic() - self._since > self.PATIENCE_SECONDS

    def take(self) -> list[int]:
        with self._lock:
            taken, self._ids = self._ids, []
        return taken


published_marks = PublishedMarks()


def _append_marking_later(events: list[Event]) -> None:
    if bus.append_new(events):
        published_marks.add(event.pk for event in events)


def flush_published_marks() -> None:
    """Mark the appended run events published now (the consumer, when a read brought
    nothing: they must not wait past the outbox relay's grace)."""
    bus.mark_published(published_marks.take())


class _NotAtOnce(Exception):
    """The read holds an event that must be matched on its own (see below)."""


def _match_in_one_transaction(
    wanted: list[int],
    heard: Hearing,
    inline: Budget | None,
    outcome: MatchOutcome,
    traces: Mapping[int, str] | None,
) -> list[int] | None:
    """Start the runs of every event of the read in one transaction with no savepoint, and
    mark the events matched at its end: one durable commit for the read instead of one per
    run and one more for marking them matched (each commit waits for the disk: the largest
    part of a light run's cost here). Each run still commits with its kept steps and run
    events, and its event is marked matched exactly when it does. (The events are read
    first and marked last: their rows are locked only for the commit, as before, not while
    the runs' steps run, since ingest marks events published in its own transactions.)
    When anything fails (an event whose matching raises, a run an earlier delivery
    already started, a type `heard` did not cover), the whole transaction is rolled back
    and None returned: the caller matches the read again event by event, run by run, so
    that a failure stays with its own event. (The light steps of the rolled-back attempt
    run again there; they act on nothing outside.)"""
    marks: list[int] = []
    steps_left = inline.steps if inline is not None else 0
    try:
        with transaction.atomic():
            events = heard.events_of(wanted)
            if events is None:
                events = Event.objects.in_bulk(wanted)
            types = {event.type for event in events.values()}
            if not heard.covers(types) or heard.waited & types:
                raise _NotAtOnce
            for missing in (pk for pk in wanted if pk not in events):
                log.warning("bus entry names event %s, which is not in the store", missing)
                outcome.done.add(missing)  # nothing to match, nothing to retry
            # The subscriptions the hearing named, from memory (see subscription_cache).
            by_type = subscription_cache.by_type(heard.subscriptions, types)
            later: list = []  # the last run's writes, sent with the mark and the COMMIT
            with unschemed_types_remembered(heard.unschemed_run_types):
                matched = _match_each(
                    wanted, events, by_type, set(), inline, outcome, traces, later=later
                )
            marks = published_marks.take()

            def last_writes(cursor) -> list:
                answered = [send(cursor) for send in later]
                mark_matched(*matched, published=marks, cursor=cursor)
                return answered

            # One round trip for the runs' last writes, the mark and the COMMIT.
            for finish in row_sql.with_commit(last_writes):
                finish()
            return matched
    except (OperationalError, InterfaceError):
        if marks:
            published_marks.add(marks)
        raise
    except Exception as exc:  # noqa: BLE001 - each is raised again by the event's own match
        if marks:
            published_marks.add(marks)
        if not isinstance(exc, _NotAtOnce):
            log.info("matching the read at once failed (%s); matching it event by event", exc)
        if inline is not None:
            inline.steps = steps_left  # the steps rolled back are owed to the next try
        outcome.started.clear()
        outcome.failed.clear()
        outcome.done.clear()
        return None


def _subscriptions(types: Collection[str]) -> dict[str, list[TriggerSubscription]]:
    """The subscriptions of `types`, with their workflows and versions (the event_type
    index: never a scan of the workflows)."""
    by_type: dict[str, list[TriggerSubscription]] = {t: [] for t in types}
    for subscription in TriggerSubscription.objects.filter(
        event_type__in=sorted(types)
    ).select_related("workflow", "version"):
        by_type[subscription.event_type].append(subscription)
    return by_type


def _match_one_by_one(
    wanted: list[int],
    heard: Hearing | None,
    inline: Budget | None,
    outcome: MatchOutcome,
    traces: Mapping[int, str] | None,
) -> list[int]:
    """Each event in its own savepoint, each run in its own transaction; then one UPDATE
    marking the matched ones."""
    events = Event.objects.in_bulk(wanted)
    for missing in (pk for pk in wanted if pk not in events):
        log.warning("bus entry names event %s, which is not in the store", missing)
        outcome.done.add(missing)  # nothing to match, nothing to retry
    if not events:
        return []
    types = sorted({event.type for event in events.values()})
    by_type = _subscriptions(types)
    if heard is None or not heard.covers(types):
        heard = hearing(types, subscriptions=False)  # read just above
    # The run events of this read share a few types, whose schemas were asked with `heard`.
    with unschemed_types_remembered(heard.unschemed_run_types):
        matched = _match_each(wanted, events, by_type, heard.waited, inline, outcome, traces)
    if matched:
        mark_matched(*matched)
    return matched


def _match_each(
    wanted: list[int],
    events: dict[int, Event],
    by_type: dict[str, list[TriggerSubscription]],
    waited_for: set[str],
    inline: Budget | None,
    outcome: MatchOutcome,
    traces: Mapping[int, str] | None = None,
    *,
    later: list | None = None,
) -> list[int]:
    """Match the events one by one, in bus order (runs of one partition key start in
    order); the ids of those matched, the others' errors in `outcome.failed`. With `later`
    (inside the caller's one transaction, no savepoints) the first error is raised
    instead, and each run's last writes are left in `later` (see one_run_write), for the
    next run's start or the caller's COMMIT to send."""
    savepoints = later is None
    matched: list[int] = []
    for pk in wanted:
        event = events.get(pk)
        if event is None:
            continue
        with tracing.delivery(event, traces.get(pk) if traces else None) as delivered:
            try:
                if event.type in waited_for:
                    deliver_to_waiters(event)
                outcome.started += _start_runs(event, by_type[event.type], inline, later)
            except (OperationalError, InterfaceError):
                raise
            except Exception as exc:
                if not savepoints:
                    delivered.failed(f"matching at once failed: {type(exc).__name__}")
                    raise
                log.exception("matching event %s failed; its entry stays pending", pk)
                outcome.failed[pk] = exc
                delivered.failed(f"matching failed: {type(exc).__name__}")
                continue
        matched.append(pk)
    return matched


# The types of the events a run ingests as it starts and finishes (runs.producers): whether
# they have a schema is asked once per read, with the listeners, not once per run event.
RUN_EVENT_TYPES = frozenset(RUN_TYPE_PREFIX + status for status in ("started", *TERMINAL_RUN))


@dataclass(frozen=True)
class Hearing:
    """Who listens to some event types right now, and which run event types have no schema.
    `subscriptions`: the ids of the subscriptions of each subscribed type. `events`: the
    events asked about (`asked`) whose type a workflow subscribes to, when asked."""

    types: frozenset[str]
    subscribed: frozenset[str]
    waited: frozenset[str]
    unschemed_run_types: frozenset[str]
    subscriptions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    events: Mapping[int, Event] = field(default_factory=dict)
    asked: frozenset[int] = frozenset()

    @property
    def listened(self) -> set[str]:
        return set(self.subscribed | self.waited)

    def covers(self, types: Collection[str]) -> bool:
        return self.types.issuperset(types)

    def events_of(self, wanted: Collection[int]) -> dict[int, Event] | None:
        """The events `wanted`, when this hearing read them all (else None: read them)."""
        if not self.asked.issuperset(wanted) or not all(pk in self.events for pk in wanted):
            return None
        return {pk: self.events[pk] for pk in wanted}


def hearing(
    types: Collection[str], *, subscriptions: bool = True, events: Collection[int] = ()
) -> Hearing:
    """In one query: the types among `types` that a published workflow subscribes to, with
    the subscriptions' ids (not asked without `subscriptions`), those a run waits for
    (EventWaiter.event_type index), and the run event types registered. Given the ids of
    `events` (the bus read's), those of them whose type a workflow subscribes to are read
    in the same round trip: matching them then reads nothing more before the runs start."""
    types = sorted(set(types))
    # Written out: the bus consumer asks this for every read, and the ORM took longer to
    # build the union than the database takes to answer it.
    quote = connection.ops.quote_name
    params: list = []
    no_id = "CAST(NULL AS BIGINT)"  # typed: the subscriptions' part has ids
    parts = [
        f"SELECT 'r', {quote('name')}, {no_id} FROM {quote(EventType._meta.db_table)} "
        f"WHERE {quote('name')} {among(sorted(RUN_EVENT_TYPES), params)}"
    ]
    if types:
        parts.append(
            f"SELECT 'w', {quote('event_type')}, {no_id} FROM {quote(EventWaiter._meta.db_table)} "
            f"WHERE {quote('event_type')} {among(types, params)} AND {quote('expires_at')} > %s"
        )
        params.append(connection.ops.adapt_datetimefield_value(timezone.now()))
    if types and subscriptions:
        parts.append(
            f"SELECT 's', {quote('event_type')}, {quote('id')} "
            f"FROM {quote(TriggerSubscription._meta.db_table)} "
            f"WHERE {quote('event_type')} {among(types, params)}"
        )
    asked = sorted(set(events)) if types and subscriptions else []
    listeners, stored = row_sql.prepared_cursor(), row_sql.prepared_cursor()
    with listeners, stored:
        with row_sql.pipelined():  # both statements, one round trip
            listeners.execute(" UNION ".join(parts), params)
            if asked:
                _read_subscribed_events(stored, asked)
        rows = listeners.fetchall()
        read = row_sql.instances(Event, stored.fetchall()) if asked else []
    found: dict[str, set[str]] = {"s": set(), "w": set(), "r": set()}
    ids: dict[str, list[int]] = {}
    for kind, name, pk in rows:
        found[kind].add(name)
        if pk is not None:
            ids.setdefault(name, []).append(pk)
    return Hearing(
        frozenset(types),
        frozenset(found["s"]),
        frozenset(found["w"]),
        RUN_EVENT_TYPES - found["r"],
        {name: tuple(sorted(pks)) for name, pks in ids.items()},
        {event.pk: event for event in read},
        frozenset(asked),
    )


def _read_subscribed_events(cursor, ids: list[int]) -> None:
    quote = connection.ops.quote_name
    events = quote(Event._meta.db_table)
    subscriptions = quote(TriggerSubscription._meta.db_table)
    params: list = []
    cursor.execute(
        f"SELECT {row_sql.columns(Event)} FROM {events} "
        f"WHERE {events}.{quote('id')} {among(ids, params)} AND EXISTS ("
        f"SELECT 1 FROM {subscriptions} "
        f"WHERE {subscriptions}.{quote('event_type')} = {events}.{quote('type')})",
        params,
    )


def listened_types(types: Collection[str]) -> set[str]:
    """The types among `types` that a published workflow subscribes to or a run waits for
    right now, in one query: the bus consumer settles the entries of every other type
    without loading their events."""
    if not types:
        return set()
    return hearing(types).listened


def _start_runs(
    event: Event,
    subscriptions: list[TriggerSubscription],
    inline: Budget | None = None,
    later: list | None = None,
) -> list[Run]:
    savepoints = later is None
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
            # Its own transaction (a savepoint inside the caller's), or, without
            # `savepoints`, part of the caller's: then any error is the caller's to handle.
            with transaction.atomic(savepoint=savepoints):
                if later:  # the previous run's last writes, before this run reads or writes
                    send_later(later)
                run = Run(
                    workflow=subscription.workflow,
                    version=subscription.version,
                    event=event,
                    correlation_id=event.correlation_id,
                    traceparent=started_span.traceparent,
                    partition_key=str(
                        (event.extensions or {}).get("partitionkey") or event.subject or ""
                    ),
                )
                row_sql.insert([run], returning_pk=True)
                run._outbox = []  # type: ignore[attr-defined]  # its run events, see above
                with one_run_write(run, later=later):  # its rows written once, together
                    # A new run has no steps yet: its state need not be read.
                    fresh = engine.RunState(run.pk, RunStatus(run.status), {})
                    admit(run, continuation=kept, state=fresh)
                    if kept is not None and kept.step_run is not None:
                        # Committed with the run, or not at all (the entry is then
                        # retried): never a run whose kept step has no message.
                        run_kept_steps(run=run, kept=kept, budget=inline)
        except IntegrityError:
            if not savepoints:
                raise
            continue  # already matched by an earlier delivery (its span is never ended)
        started_span.end(run)
        started.append(run)
    return started


def mark_matched(*event_ids: int, published: Collection[int] = (), cursor=None) -> None:
    """Before the bus entries are acknowledged: an event left unmatched once its partition
    is drained was lost from the bus, and the relay publishes it again. `published`: other
    events to mark published in the same UPDATE (see PublishedMarks)."""
    stamps.stamp(matched=event_ids, published=published, cursor=cursor)


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
