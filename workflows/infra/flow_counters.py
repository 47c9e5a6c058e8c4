"""Live traffic of the event flow map (dashboard/live/flow_map.py): how many events came in on
each channel with each type, how many runs of each workflow they started, and how many
failed, over the last few minutes.

Counted where the events are published and the runs start and finish, never read back
from the events or runs tables: every process that publishes events (the web process,
the bus consumer, workers) adds its increments to the pipeline that already puts the
events on the bus (workflows.infra.counters.count_published), so counting costs no round trip
and no query of its own, and a map refresh costs one pipelined read of a few small Redis
hashes whatever the event rate. (A query over the last minutes of `Event` and `Run` would
read every row of those minutes on each refresh: at 1,000 events/s that is 300,000 rows
every couple of seconds.)

One hash per minute (`flowmap:<unix minute>`), expiring a few minutes after the window has
passed it. Its fields, tab-separated:

    e  channel type emitter                  an event accepted (published the first time)
    r  channel type emitter workflow outcome a run started or failed, by its trigger event
    d  channel type emitter                  a dead letter of an event (never matched, or
                                             cut by the causation-depth guard)

`emitter` is the workflow whose run emitted the event (empty for an outside event): with
`workflow`, it lets a reader leave out what a user may not see (team visibility).

Like the Prometheus counters, these start again from zero when Redis loses its data:
the map then shows the traffic since.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from workflows.core.lineage import RUN_TYPE_PREFIX, emitting_workflow
from workflows.infra.redis_client import client, key

if TYPE_CHECKING:
    from workflows.events.models import Event

WINDOW_MINUTES = 5
BUCKET_SECONDS = 60
# A bucket outlives the window that reads it by a couple of minutes (clock differences
# between hosts, a reader in the first seconds of a minute).
BUCKET_TTL = (WINDOW_MINUTES + 2) * BUCKET_SECONDS
# Runs of these origins are traffic: a trigger matched, or a parent run started a child.
# Replays, re-drives, shadow and try runs are someone's action on old events, not flow.
COUNTED_ORIGINS = frozenset({"trigger", "child"})
STARTED, FAILED = "started", "failed"
# Set by producers.emit_run_event on a run event it creates: (channel, type, emitter) of
# the event that started the run, for the run's edge of the map.
TRIGGER_ATTRIBUTE = "_sb_flow_trigger"


def bucket_key(minute: int) -> str:
    return key("flowmap", minute)


def _clean(text: object) -> str:
    return str(text or "").replace("\t", " ")


def event_field(channel: str, event_type: str, emitter: str) -> str:
    return "\t".join(("e", _clean(channel), _clean(event_type), _clean(emitter)))


def run_field(channel: str, event_type: str, emitter: str, workflow: str, outcome: str) -> str:
    parts = (channel, event_type, emitter, workflow, outcome)
    return "\t".join(("r", *map(_clean, parts)))


def dead_letter_field(channel: str, event_type: str, emitter: str) -> str:
    return "\t".join(("d", _clean(channel), _clean(event_type), _clean(emitter)))


def trigger_of(event: Event) -> tuple[str, str, str]:
    """What a run's edge names of the event that started it."""
    return (event.channel or "unknown", event.type, emitting_workflow(event) or "")


def mark_run_event(run_event: Event, *, origin: str, trigger: Event | None) -> None:
    """Remember on a new run event (signalbox.run.started|failed) which event started its
    run, so that publishing it counts the run on the map (count_published below)."""
    if trigger is not None and origin in COUNTED_ORIGINS:
        setattr(run_event, TRIGGER_ATTRIBUTE, trigger_of(trigger))


def add_published(pipe: redis.client.Pipeline, events: Iterable[Event], now: float) -> None:
    """Add to `pipe` the map's increments for events published for the first time: the
    event itself, and for a run event the run it tells of (one HINCRBY per field)."""
    fields: Counter[str] = Counter()
    for event in events:
        fields[event_field(*trigger_of(event))] += 1
        trigger = getattr(event, TRIGGER_ATTRIBUTE, None)
        if trigger is None:
            continue
        outcome = event.type[len(RUN_TYPE_PREFIX) :]
        if outcome in (STARTED, FAILED):
            workflow = emitting_workflow(event) or ""
            fields[run_field(*trigger, workflow, outcome)] += 1
    _increment(pipe, fields, now)


def _increment(pipe, fields: Counter[str], now: float) -> None:
    if not fields:
        return
    name = bucket_key(int(now // BUCKET_SECONDS))
    for field, count in fields.items():
        pipe.hincrby(name, field, count)
    pipe.expire(name, BUCKET_TTL)


def count_dead_letter(event: Event | None) -> None:
    """An event became a dead letter: a failure on its channel → type edge. A rare path,
    so a round trip of its own; never fails its caller (the map is only a picture)."""
    if event is None:
        return
    try:
        pipe = client().pipeline(transaction=False)
        _increment(pipe, Counter({dead_letter_field(*trigger_of(event)): 1}), time.time())
        pipe.execute()
    except redis.RedisError:
        pass


# --- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """The raw counts of the window, and how many seconds it covers (the minutes before
    this one in full, and this one so far): rates are counts over that span."""

    fields: dict[str, int]
    seconds: float


def read_window(now: float | None = None) -> Window:
    """One pipelined read of the window's buckets; an empty window if Redis is away."""
    now = time.time() if now is None else now
    minute = int(now // BUCKET_SECONDS)
    minutes = range(minute - WINDOW_MINUTES + 1, minute + 1)
    seconds = (WINDOW_MINUTES - 1) * BUCKET_SECONDS + (now - minute * BUCKET_SECONDS)
    totals: Counter[str] = Counter()
    try:
        pipe = client().pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(bucket_key(m))
        for bucket in pipe.execute():
            for field, value in bucket.items():
                totals[field] += int(value)
    except redis.RedisError:
        return Window(fields={}, seconds=seconds)
    return Window(fields=dict(totals), seconds=max(seconds, 1.0))


@dataclass
class EdgeCount:
    count: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Traffic:
    """The window's traffic by edge: (channel, type) for events in, (type, workflow) for
    the runs they started; `failed` counts failed runs and dead letters."""

    inbound: dict[tuple[str, str], EdgeCount]
    runs: dict[tuple[str, str], EdgeCount]
    seconds: float


def traffic(window: Window, *, hidden_slugs: frozenset[str] = frozenset()) -> Traffic:
    """Sum the window's fields by edge, leaving out what touches a workflow in
    `hidden_slugs` (its runs, and the events its runs emitted)."""
    inbound: dict[tuple[str, str], EdgeCount] = {}
    runs: dict[tuple[str, str], EdgeCount] = {}
    for field, value in window.fields.items():
        kind, *parts = field.split("\t")
        if kind in ("e", "d") and len(parts) == 3:
            channel, event_type, emitter = parts
            if emitter in hidden_slugs:
                continue
            edge = inbound.setdefault((channel, event_type), EdgeCount())
            if kind == "e":
                edge.count += value
            else:
                edge.failed += value
        elif kind == "r" and len(parts) == 5:
            channel, event_type, emitter, workflow, outcome = parts
            if emitter in hidden_slugs or workflow in hidden_slugs:
                continue
            edge = runs.setdefault((event_type, workflow), EdgeCount())
            if outcome == STARTED:
                edge.count += value
            elif outcome == FAILED:
                edge.failed += value
                # A failed run is a failure of the events that came in on this edge too.
                inbound.setdefault((channel, event_type), EdgeCount()).failed += value
    return Traffic(inbound=inbound, runs=runs, seconds=window.seconds)
