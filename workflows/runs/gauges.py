"""Redis gauges: Celery queue depth and bus partition lag, read by the dashboard's overview
and workers pages and by the Prometheus scrape."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from django.conf import settings

from workflows.events import bus
from workflows.infra.redis_client import client

LAG_SCAN_LIMIT = 10_000


def celery_queue_key(queue: str | None = None) -> str:
    """The list Celery's Redis transport keeps a queue in (the transport prefixes every key
    with global_keyprefix)."""
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
    return f"{prefix}{queue or settings.CELERY_TASK_DEFAULT_QUEUE}"


def queue_lengths(queues: list[str] | None = None) -> dict[str, int | None]:
    """Messages waiting per queue (None: Redis cannot say); by default every queue
    Signalbox sends to (workflows.runs.step_queues)."""
    from workflows.runs.step_queues import all_queues

    names = queues or all_queues()
    try:
        pipe = client().pipeline(transaction=False)
        for name in names:
            pipe.llen(celery_queue_key(name))
        return dict(zip(names, pipe.execute(), strict=True))
    except redis.RedisError:
        return dict.fromkeys(names)


@dataclass
class PartitionLag:
    partition: int
    stream: str
    length: int | None = None
    pending: int | None = None
    lag: int | None = None
    lag_capped: bool = False
    consumers: int | None = None
    last_delivered: str = ""
    error: str = ""


def bus_partitions() -> list[PartitionLag]:
    """Per partition: entries in the stream, entries the group read but did not acknowledge
    (pending) and entries it has not read yet (lag; counted when the server cannot say)."""
    group = settings.SIGNALBOX["BUS_GROUP"]
    out = []
    conn = client()
    for partition in range(bus.partitions()):
        stream = bus.stream_key(partition)
        row = PartitionLag(partition, stream)
        try:
            row.length = conn.xlen(stream)
            for info in conn.xinfo_groups(stream):
                if info.get("name") != group:
                    continue
                row.pending = int(info.get("pending") or 0)
                row.consumers = int(info.get("consumers") or 0)
                row.last_delivered = str(info.get("last-delivered-id") or "")
                lag = info.get("lag")
                if lag is not None:
                    row.lag = int(lag)
                else:  # Redis < 7, or trimmed entries make the server unsure: count them
                    newer = conn.xrange(
                        stream, min=f"({row.last_delivered}", count=LAG_SCAN_LIMIT + 1
                    )
                    row.lag, row.lag_capped = (
                        min(len(newer), LAG_SCAN_LIMIT),
                        len(newer) > LAG_SCAN_LIMIT,
                    )
        except redis.ResponseError as exc:  # no such stream yet: nothing published
            row.error = str(exc)
        except redis.RedisError as exc:
            row.error = f"Redis unavailable: {exc}"
        out.append(row)
    return out
