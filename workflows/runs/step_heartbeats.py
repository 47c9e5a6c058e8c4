"""A running attempt's heartbeat.

While a worker executes a step, a small daemon thread renews `StepRun.heartbeat_at` every
`SIGNALBOX["STEP_HEARTBEAT_SECONDS"]`. A worker that dies (SIGKILL, OOM, lost node) stops
beating, and the scheduler (`sweeps.py: expire_leases`) fails its attempt as `timeout.heartbeat`
once the heartbeat is `SIGNALBOX["STEP_HEARTBEAT_TIMEOUT_SECONDS"]` old: a dead worker
costs about a minute, not the step's whole timeout. (Component heartbeats of the bus
consumer and the scheduler are something else: `workflows/infra/heartbeat.py`, in Redis.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from workflows.core.states import StepStatus
from workflows.runs.models import StepRun

log = logging.getLogger("signalbox.heartbeats")
# Leaving the block waits this long at most for a beat in flight (a database that hangs
# must not hold the attempt's result back); the thread still ends on its own later.
JOIN_TIMEOUT = 5.0


def interval() -> float:
    return float(settings.SIGNALBOX["STEP_HEARTBEAT_SECONDS"])


def timeout() -> timedelta:
    return timedelta(seconds=float(settings.SIGNALBOX["STEP_HEARTBEAT_TIMEOUT_SECONDS"]))


def beat(step_run_id: int) -> bool:
    """Renew one attempt's heartbeat. Conditional on the attempt still running, so a beat
    that arrives after it finished, parked or was declared lost changes nothing. False
    when the attempt is no longer running."""
    return bool(
        StepRun.objects.filter(pk=step_run_id, status=StepStatus.RUNNING).update(
            heartbeat_at=timezone.now()
        )
    )


def _close_connection() -> None:
    try:
        connection.close()
    except Exception:
        log.debug("closing the heartbeat's database connection failed", exc_info=True)


def _keep_beating(step_run_id: int, every: float, stop: threading.Event) -> None:
    # Runs in its own thread, so with its own database connection (Django's are per
    # thread), opened at the first beat and closed here at the end.
    try:
        while not stop.wait(every):
            try:
                if not beat(step_run_id):
                    return  # nothing left to renew: the attempt is no longer running
            except Exception:
                log.warning(
                    "could not renew the heartbeat of attempt %s; trying again in %gs",
                    step_run_id,
                    every,
                    exc_info=True,
                )
                _close_connection()  # a broken connection is not reused: reconnect next time
    finally:
        _close_connection()


@contextmanager
def heartbeating(step_run_id: int, *, every: float | None = None) -> Iterator[threading.Thread]:
    """Renew the attempt's heartbeat while the block runs; stop when it ends, however it
    ends. Yields the beating thread (tests and debuggers look at it)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_keep_beating,
        args=(step_run_id, interval() if every is None else every, stop),
        name=f"step-heartbeat-{step_run_id}",
        daemon=True,  # never keeps a worker process alive
    )
    try:
        thread.start()
    except RuntimeError:  # no thread to be had: run the step anyway, its timeout still holds
        log.warning("could not start the heartbeat of attempt %s", step_run_id, exc_info=True)
    try:
        yield thread
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join(JOIN_TIMEOUT)
