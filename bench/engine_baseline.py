"""The engine benchmark's baseline: a plain Celery app whose tasks do nothing.

`python -m bench.engine` starts a worker of this app (`celery -A bench.engine_baseline worker`)
on the same Redis as Signalbox, under its own key prefix, and sends it the same shapes:
a `celery.chain` of N no-ops (N = the workflow's step count), and for the fan-out a start
no-op chained to a group of 100 no-ops whose last one to finish triggers the join. There is
no result backend: every task counts or records in Redis itself, so the measurement is the
bare cost of a Celery hop. The broker settings are Signalbox's own (acks_late, prefetch 1,
reject on worker loss, task events on), so the difference is Signalbox's work per step.

No Django here: this module must import in a worker that has no settings.
"""

from __future__ import annotations

import functools
import os
import time

import redis
from celery import Celery, chain, group

REDIS_URL = os.environ.get("BENCH_BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_BASELINE_PREFIX", "bench-engine-baseline")
QUEUE = "bench-baseline"

app = Celery("bench-baseline")
app.conf.update(
    broker_url=REDIS_URL,
    broker_transport_options={"global_keyprefix": f"{PREFIX}:celery:"},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    worker_send_task_events=True,  # as Signalbox's settings do
)


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def finished_key() -> str:
    return f"{PREFIX}:finished"


def counter_key(run: str) -> str:
    return f"{PREFIX}:fanned:{run}"


def done_list_key() -> str:
    return f"{PREFIX}:done"


def _finish(run: str) -> None:
    # The run's end as the task saw it, and a message to the benchmark, which notes when
    # it sees the run done (Signalbox's runs are seen through a NOTIFY after their commit:
    # one hop to the client on each side).
    pipe = _redis().pipeline(transaction=False)
    pipe.hset(finished_key(), run, repr(time.time()))
    pipe.rpush(done_list_key(), run)
    pipe.execute()


@app.task(name="bench.baseline.noop")
def noop(run: str, last: bool) -> None:
    """A step: nothing; the last link of a chain records when the run finished."""
    if last:
        _finish(run)


@app.task(name="bench.baseline.fan")
def fan(run: str, total: int) -> None:
    """One of `total` parallel no-ops: the one that completes the count starts the join."""
    if _redis().incr(counter_key(run)) == total:
        join.delay(run)


@app.task(name="bench.baseline.join")
def join(run: str) -> None:
    _redis().delete(counter_key(run))
    _finish(run)


def chain_of(run: str, steps: int):
    return chain(noop.si(run, index == steps - 1) for index in range(steps))


def fan_out(run: str, width: int):
    """start -> `width` no-ops in parallel -> join (the engine's start/fan-out/join shape)."""
    return chain(noop.si(run, False), group(fan.si(run, width) for _ in range(width)))
