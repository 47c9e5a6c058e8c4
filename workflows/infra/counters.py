"""Installation-wide counters kept in Redis hashes: every process increments them (the web
process, workers and the bus consumer all publish events), and the Prometheus scrape
(workflows.operations.prometheus) reads them from any web process."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import redis

from workflows.infra import flow_counters
from workflows.infra.redis_client import key

if TYPE_CHECKING:
    from workflows.events.models import Event

EVENTS_KEY = ("metrics", "events")  # field: channel
RUNS_KEY = ("metrics", "runs")  # field: workflow \t outcome
# Ingest answers other than "accepted" (accepted events are the published counts above,
# counted in the publishing pipeline at no extra round trip). field: channel \t result
INGEST_KEY = ("metrics", "ingest")
RUN_TYPE_PREFIX = "signalbox.run."


def count_published(pipe: redis.client.Pipeline, events: Iterable[Event]) -> None:
    """Add the counter increments for events published for the first time to `pipe`, so
    they cost no round trip of their own (one increment per field, whatever the count).
    The event flow map's per-minute counts ride in the same pipeline (flow_counters.py)."""
    events = list(events)
    channels: Counter[str] = Counter()
    runs: Counter[str] = Counter()
    for event in events:
        channels[event.channel or "unknown"] += 1
        if event.channel == "run" and event.type.startswith(RUN_TYPE_PREFIX):
            workflow = str((event.extensions or {}).get("sbworkflow") or "")
            outcome = event.type[len(RUN_TYPE_PREFIX) :]
            runs[f"{workflow}\t{outcome}"] += 1
    for channel, count in channels.items():
        pipe.hincrby(key(*EVENTS_KEY), channel, count)
    for field, count in runs.items():
        pipe.hincrby(key(*RUNS_KEY), field, count)
    flow_counters.add_published(pipe, events, time.time())


def ingest_result(status: int, *, lone: bool = True) -> str | None:
    """The `result` label of an ingest answer's status; None for an accepted event
    (counted when published) or an accepted batch."""
    if status == 200 and lone:
        return "duplicate"
    if status < 300:
        return None
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "unavailable"
    return "rejected"


def count_ingest(channel: str, result: str) -> None:
    """One ingest answer that stored nothing new; never fails its caller."""
    try:
        from workflows.infra.redis_client import client as redis_client

        redis_client().hincrby(key(*INGEST_KEY), f"{channel}\t{result}", 1)
    except redis.RedisError:
        pass
