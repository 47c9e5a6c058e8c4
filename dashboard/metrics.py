"""Figures and series for the overview page, and the queue/bus/worker gauges the overview
and the workers page share.

Everything is read from the truth: event counts and run outcomes from the event store
(a run's start and finish are `signalbox.run.*` events ingested with the state change),
its closed minutes through the per-minute rollups the scheduler keeps
(workflows.queries.event_rollups), the last minutes along the received_at index; step
latencies from StepRun (an id range found from the window's start, see
workflows.queries.dashboard.first_id_at_or_after), queue depth and bus lag from Redis
(workflows.runs.gauges). Results are cached per process for a few seconds, so a hundred open
overview pages cost one computation, not a hundred.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Count
from django.db.models.expressions import RawSQL
from django.utils import timezone

from workflows.demo import traffic as demo_traffic
from workflows.events.models import Event
from workflows.queries import dashboard as ds
from workflows.queries import event_rollups
from workflows.queries import events as store
from workflows.queries.models import EventRollup
from workflows.recovery import selectors as recovery
from workflows.runs.gauges import bus_partitions, queue_lengths
from workflows.runs.models import StepRun

T = TypeVar("T")

# name -> (span, bucket); values are shown per second (events) or per minute (runs).
WINDOWS: dict[str, tuple[timedelta, int]] = {
    "15m": (timedelta(minutes=15), 60),
    "1h": (timedelta(hours=1), 60),
    "6h": (timedelta(hours=6), 300),
}
DEFAULT_WINDOW = "15m"
TOP_TYPES = 6
CACHE_SECONDS = 2.0
RUN_PREFIX = "signalbox.run."


class TTLCache:
    """A tiny per-process cache; concurrent callers of one key wait for one computation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Any, tuple[float, Any]] = {}
        self._locks: dict[Any, threading.Lock] = {}

    def get(self, cache_key: Any, ttl: float, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        hit = self._values.get(cache_key)
        if hit and now - hit[0] < ttl:
            return hit[1]
        with self._lock:
            per_key = self._locks.setdefault(cache_key, threading.Lock())
        with per_key:
            hit = self._values.get(cache_key)
            if hit and time.monotonic() - hit[0] < ttl:
                return hit[1]
            started = time.monotonic()
            value = compute()
            self._values[cache_key] = (started, value)
            return value

    def peek(self, cache_key: Any) -> Any | None:
        """The last value computed for `cache_key`, however old, or None."""
        hit = self._values.get(cache_key)
        return hit[1] if hit else None

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


cache = TTLCache()


# --- series from the database ------------------------------------------------------------------
def _bucket_sql(column: str, bucket: int) -> str:
    if connection.vendor == "postgresql":
        return f"floor(extract(epoch from {column}) / {int(bucket)})::bigint"
    return f"cast(strftime('%%s', {column}) / {int(bucket)} as integer)"


def event_counts(
    since: datetime, bucket: int, hidden: frozenset[int], now: datetime | None = None
) -> list[tuple[int, str, int]]:
    """(bucket number, type, count) of events received since `since`. Whole minutes the
    scheduler has rolled up are read from their rollups (workflows.queries.event_rollups),
    the rest (the last minutes, any the scheduler has not reached) from the event store
    along the received_at index. Events of workflows the user may not see (their run events
    and what their steps emitted, event_selectors.hidden_events) are left out."""
    now = now or timezone.now()
    first = event_rollups.floor_minute(since)
    first = first if first == since else first + event_rollups.MINUTE
    end = max(first, event_rollups.closed_before(now))
    done = event_rollups.rolled_up(first, end)
    totals: dict[tuple[int, str], int] = {}
    if done:
        rows = (
            EventRollup.objects.filter(minute__gte=first, minute__lt=end)
            .exclude(type=event_rollups.MARKER)
            .exclude(workflow__in=sorted(ds.hidden_slugs(hidden)) if hidden else [])
            .values_list("minute", "type", "count")
        )
        for minute, event_type, n in rows:
            key = (int(minute.timestamp()) // bucket, event_type)
            totals[key] = totals.get(key, 0) + n
    # What the rollups do not hold, as ranges of the store: the part-minute at the start,
    # minutes not rolled up, and everything from the last closed minute on.
    ranges: list[tuple[datetime, datetime | None]] = []
    if since < first:
        ranges.append((since, first))
    minute = first
    while minute < end:
        if minute not in done:
            if ranges and ranges[-1][1] == minute:
                ranges[-1] = (ranges[-1][0], minute + event_rollups.MINUTE)
            else:
                ranges.append((minute, minute + event_rollups.MINUTE))
        minute += event_rollups.MINUTE
    ranges.append((end if end > since else since, None))
    for start, stop in ranges:
        for b, event_type, n in _stored_counts(start, stop, bucket, hidden):
            totals[(b, event_type)] = totals.get((b, event_type), 0) + n
    return [(b, t, n) for (b, t), n in totals.items()]


def _stored_counts(
    start: datetime, stop: datetime | None, bucket: int, hidden: frozenset[int]
) -> list[tuple[int, str, int]]:
    """(bucket number, type, count) of the events received in [start, stop), from the store
    (the received_at index bounds the scan)."""
    events = Event.objects.filter(received_at__gte=start)
    if stop is not None:
        events = events.filter(received_at__lt=stop)
    events = store.visible_events(events, hidden=hidden)
    rows = (
        events.annotate(b=RawSQL(_bucket_sql(f"{Event._meta.db_table}.received_at", bucket), ()))
        .values_list("b", "type")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [(int(b), t, int(n)) for b, t, n in rows]


def step_durations(
    since: datetime, bucket: int, hidden: frozenset[int]
) -> dict[int, tuple[float, float, int]]:
    """bucket -> (p50 ms, p95 ms, attempts) of step attempts that finished since `since`."""
    lower = ds.first_id_at_or_after(StepRun, "created_at", since - timedelta(hours=1))
    if lower is None:
        return {}
    hide = ""
    params: list[Any] = [lower, since]
    if hidden:
        hide = " AND r.workflow_id NOT IN (" + ", ".join(["%s"] * len(hidden)) + ")"
        params += sorted(hidden)
    base = (
        "FROM workflows_steprun s JOIN workflows_run r ON r.id = s.run_id "
        "WHERE s.id >= %s AND s.finished_at >= %s AND s.started_at IS NOT NULL "
        # Shadow runs answer side effects from recordings: their timings are not the system's.
        f"AND s.status IN ('succeeded', 'failed') AND r.origin <> 'shadow'{hide}"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT {_bucket_sql('s.finished_at', bucket)} AS b, "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY "
                "extract(epoch from s.finished_at - s.started_at)), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY "
                "extract(epoch from s.finished_at - s.started_at)), count(*) "
                f"{base} GROUP BY 1",
                params,
            )
            return {
                int(b): (float(p50) * 1000, float(p95) * 1000, int(n))
                for b, p50, p95, n in cursor.fetchall()
            }
        cursor.execute(
            f"SELECT {_bucket_sql('s.finished_at', bucket)}, "
            "(julianday(s.finished_at) - julianday(s.started_at)) * 86400000.0 "
            f"{base} LIMIT 200000",
            params,
        )
        grouped: dict[int, list[float]] = {}
        for b, ms in cursor.fetchall():
            grouped.setdefault(int(b), []).append(float(ms))
        return {b: (_percentile(v, 0.5), _percentile(v, 0.95), len(v)) for b, v in grouped.items()}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Overview:
    window: str
    bucket: int
    generated_at: str
    times: list[int]  # bucket starts, unix seconds
    event_types: list[str]
    events_per_second: dict[str, list[float]]
    runs_per_minute: dict[str, list[float]]  # started, succeeded, failed
    latency_ms: dict[str, list[float | None]]  # p50, p95
    figures: dict[str, Any] = field(default_factory=dict)
    partitions: list[dict] = field(default_factory=list)
    demo: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def overview(
    window: str = DEFAULT_WINDOW,
    *,
    hidden: frozenset[int] = frozenset(),
    now: datetime | None = None,
) -> Overview:
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    return cache.get(
        ("overview", window, hidden),
        CACHE_SECONDS,
        lambda: compute_overview(window, hidden=hidden, now=now),
    )


def compute_overview(
    window: str, *, hidden: frozenset[int] = frozenset(), now: datetime | None = None
) -> Overview:
    span, bucket = WINDOWS[window]
    now = now or timezone.now()
    last_bucket = int(now.timestamp()) // bucket
    first_bucket = last_bucket - int(span.total_seconds()) // bucket + 1
    since = datetime.fromtimestamp(first_bucket * bucket, tz=now.tzinfo)
    buckets = list(range(first_bucket, last_bucket + 1))
    index = {b: i for i, b in enumerate(buckets)}
    counts = event_counts(since, bucket, hidden, now)
    totals: dict[str, int] = {}
    for _b, event_type, n in counts:
        if not event_type.startswith(RUN_PREFIX):
            totals[event_type] = totals.get(event_type, 0) + n
    top = [t for t, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:TOP_TYPES]]
    types = top + (["other"] if len(totals) > len(top) else [])
    per_type = {t: [0.0] * len(buckets) for t in types}
    runs = {s: [0.0] * len(buckets) for s in ("started", "succeeded", "failed")}
    elapsed_last = max(1.0, now.timestamp() - last_bucket * bucket)
    for b, event_type, n in counts:
        if b not in index:
            continue
        i = index[b]
        # The current bucket is still filling: rate over the part that has elapsed.
        seconds = elapsed_last if b == last_bucket else bucket
        if event_type.startswith(RUN_PREFIX):
            outcome = event_type[len(RUN_PREFIX) :]
            if outcome in runs:
                runs[outcome][i] += n * 60.0 / seconds
            continue
        name = event_type if event_type in per_type else "other"
        per_type[name][i] += n / seconds

    durations = step_durations(since, bucket, hidden)
    latency = {"p50": [None] * len(buckets), "p95": [None] * len(buckets)}
    for b, (p50, p95, _n) in durations.items():
        if b in index:
            latency["p50"][index[b]] = round(p50, 1)
            latency["p95"][index[b]] = round(p95, 1)

    succeeded = sum(n for b, t, n in counts if t == RUN_PREFIX + "succeeded")
    failed = sum(n for b, t, n in counts if t == RUN_PREFIX + "failed")
    minute_ago = now - timedelta(seconds=60)
    recent = event_counts(minute_ago, 60, hidden, now) if bucket != 60 else None
    last_minute = (
        recent
        if recent is not None
        else [c for c in counts if c[0] >= (int(minute_ago.timestamp()) // 60)]
    )
    events_last_minute = sum(n for _b, t, n in last_minute if not t.startswith(RUN_PREFIX))
    # One bucket spanning the whole window: the window's own percentiles.
    overall = next(iter(step_durations(since, 10**10, hidden).values()), None)
    partitions = bus_partitions()
    queue = queue_lengths()
    demo = demo_traffic.state()
    figures = {
        "events_per_second": round(events_last_minute / 60.0, 2),
        "events_in_window": sum(totals.values()),
        "runs_started": sum(n for b, t, n in counts if t == RUN_PREFIX + "started"),
        "runs_succeeded": succeeded,
        "runs_failed": failed,
        "failure_rate": round(100.0 * failed / (succeeded + failed), 1)
        if succeeded + failed
        else None,
        "latency_p50_ms": round(overall[0], 1) if overall else None,
        "latency_p95_ms": round(overall[1], 1) if overall else None,
        "steps_finished": overall[2] if overall else 0,
        "queue_depth": None if None in queue.values() else sum(queue.values()),
        "bus_lag": sum(p.lag or 0 for p in partitions),
        "bus_pending": sum(p.pending or 0 for p in partitions),
        "dead_letters": recovery.open_dead_letter_count(hidden=hidden),
    }
    return Overview(
        window=window,
        bucket=bucket,
        generated_at=now.isoformat(),
        times=[b * bucket for b in buckets],
        event_types=types,
        events_per_second={t: [round(v, 3) for v in vs] for t, vs in per_type.items()},
        runs_per_minute={s: [round(v, 2) for v in vs] for s, vs in runs.items()},
        latency_ms=latency,
        figures=figures,
        partitions=[asdict(p) for p in partitions],
        demo=asdict(demo),
    )
