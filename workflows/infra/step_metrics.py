"""Step durations by kind, as a Prometheus histogram kept in Redis.

Workers (and the bus consumer, which runs light steps itself) are many processes on many
hosts, so each process adds its observations to one Redis hash (bucket counts, sum and
count per kind and outcome) that any web process reads at scrape time: no process has to
aggregate its siblings, as for workflows.infra.counters. Observations are buffered in the
process and written in one pipeline after each Celery task and each bus read (`flush`),
not one round trip per step."""

from __future__ import annotations

import threading
import time
from collections import Counter

import redis

from workflows.infra.redis_client import client, key

HISTOGRAM_KEY = ("metrics", "step_seconds")  # field: kind \t outcome \t bucket|sum|count
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_sums: Counter[str] = Counter()
_flushed = [time.monotonic()]
STALE_SECONDS = 10.0


def observe(kind: str, seconds: float, succeeded: bool) -> None:
    outcome = "succeeded" if succeeded else "failed"
    prefix = f"{kind}\t{outcome}\t"
    seconds = max(0.0, seconds)
    # Stored per bucket, not cumulatively: one increment per observation; the collector
    # adds them up into Prometheus' cumulative `le` buckets.
    bucket = next((str(b) for b in BUCKETS if seconds <= b), "+Inf")
    with _lock:
        _counts[prefix + bucket] += 1
        _sums[prefix + "sum"] += seconds
        stale = time.monotonic() - _flushed[0] > STALE_SECONDS
    if stale:  # a process that runs steps outside tasks and bus reads (e.g. a try run)
        flush()


def flush() -> None:
    """Write the buffered observations (one pipeline); kept for the next try if Redis is away."""
    with _lock:
        if not _counts:
            return
        counts, sums = dict(_counts), dict(_sums)
        _flushed[0] = time.monotonic()
        _counts.clear()
        _sums.clear()
    try:
        pipe = client().pipeline(transaction=False)
        name = key(*HISTOGRAM_KEY)
        for field, n in counts.items():
            pipe.hincrby(name, field, n)
        for field, total in sums.items():
            pipe.hincrbyfloat(name, field, total)
        pipe.execute()
    except redis.RedisError:
        with _lock:
            _counts.update(counts)
            _sums.update(sums)


def read() -> dict[tuple[str, str], tuple[list[tuple[str, float]], float, float]]:
    """(kind, outcome) -> (cumulative buckets [(le, count)], count, sum)."""
    raw = client().hgetall(key(*HISTOGRAM_KEY))
    per: dict[tuple[str, str], dict[str, float]] = {}
    for field, value in raw.items():
        kind, outcome, slot = field.split("\t")
        per.setdefault((kind, outcome), {})[slot] = float(value)
    out = {}
    for labels, slots in sorted(per.items()):
        running, buckets = 0.0, []
        for le in [*(str(b) for b in BUCKETS), "+Inf"]:
            running += slots.get(le, 0.0)
            buckets.append((le, running))
        out[labels] = (buckets, running, slots.get("sum", 0.0))
    return out
