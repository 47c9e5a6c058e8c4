"""Installation-wide counters kept in Redis hashes: every process increments them (the web
process, workers and the bus consumer all publish events), and the Prometheus scrape
(workflows.prometheus) reads them from any web process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import redis

from .models import Event
from .redis_client import key

EVENTS_KEY = ("metrics", "events")  # field: channel
RUNS_KEY = ("metrics", "runs")  # field: workflow \t outcome
RUN_TYPE_PREFIX = "signalbox.run."


def count_published(pipe: redis.client.Pipeline, events: Iterable[Event]) -> None:
    """Add the counter increments for events published for the first time to `pipe`, so
    they cost no round trip of their own (one increment per field, whatever the count)."""
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
