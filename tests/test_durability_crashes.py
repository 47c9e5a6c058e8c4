"""Runs survive crashes and restarts: a worker killed mid-step loses nothing and records the
step once; pending retries and delays live in the database and outlast restarts.

The end-to-end tests drive the shared stack's real processes (they kill a Celery pool
process, stop the scheduler, restart everything) and leave it running again. They use the
shared stack rather than one of their own because every stack on the test database sweeps
the same timers: a second scheduler would fire the retry these tests keep waiting.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from tests.durable_runs import (
    Gate,
    attempt,
    celery_messages_in_redis,
    finished,
    journal_kinds,
    pool_process_calling,
    run_of,
    status_of,
    worker_log,
)
from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Reply
from tests.test_spine import publish, send
from tests.waiting import wait_until
from workflows.core import engine
from workflows.runs import advance as runs
from workflows.runs.models import Run, StepRun
from workflows.runs.projections import differences

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_killed_mid_step_loses_nothing_and_records_the_step_once(api, stack):
    gate = Gate(hold=1)
    try:
        publish(
            api,
            "killed",
            definition(
                http_step(
                    "call",
                    gate.url,
                    timeout_seconds=2,
                    retry={"max_attempts": 3, "backoff": "fixed", "delay_seconds": 0.1},
                ),
                log_step("after", after=("call",)),
                event="com.example.killed",
            ),
        )
        run_id = run_of(send(api, cloudevent("com.example.killed"))).pk
        wait_until(lambda: gate.requests, timeout=60, message="the step's request")
        victim = wait_until(
            lambda: pool_process_calling(stack, gate.port),
            timeout=30,
            message="the pool process making the request",
        )
        mid_step = attempt(run_id, "call")
        assert mid_step.status == "running"
        assert mid_step.worker.endswith(f":{victim.pid}")
        assert differences(Run.objects.get(pk=run_id)) == []  # a running step agrees too

        os.kill(victim.pid, signal.SIGKILL)
        wait_until(
            lambda: not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE,
            timeout=30,
            message="the pool process to die",
        )
        gate.opened.set()
        # The message comes back (reject_on_worker_lost) but finds the attempt running; its
        # heartbeat stops, the scheduler fails it as timeout.heartbeat, and attempt 2 runs.
        run = finished(run_id, timeout=60 + runs.LEASE_GRACE.total_seconds())
        log = worker_log(stack)
    finally:
        gate.close()

    first, second = attempt(run_id, "call", 1), attempt(run_id, "call", 2)
    assert run.status == "succeeded", run.error
    assert (first.status, first.error_code, first.retryable) == (
        "failed",
        "timeout.heartbeat",
        True,
    )
    assert second.status == "succeeded"
    assert StepRun.objects.filter(run_id=run_id, step_id="call", status="succeeded").count() == 1
    assert StepRun.objects.filter(run_id=run_id, step_id="after").count() == 1
    assert len(gate.requests) == 2 and len(set(gate.keys())) == 1  # one idempotency key
    assert [k for k in journal_kinds(run_id) if k[0] in ("step.succeeded", "step.failed")] == [
        ("step.failed", "call", 1),
        ("step.succeeded", "call", 2),
        ("step.succeeded", "after", 1),
    ]
    # reject_on_worker_lost put the killed task's message back, and it was delivered again.
    assert "WorkerLostError" in log
    received = Counter(re.findall(r"Task signalbox\.execute_step\[(\S+)\] received", log))
    assert max(received.values()) == 2, received
    # The killed attempt's own result, if it ever came, is fenced out.
    late = engine.StepFinished("call", 1, succeeded=True)
    assert runs.record_result(step_run_id=first.pk, happening=late) is False
    assert differences(Run.objects.get(pk=run_id)) == []
    wait_until(
        lambda: celery_messages_in_redis() == 0,
        timeout=60,
        message="no message left behind in Redis",
    )


# --- timers live in the database -------------------------------------------------------------
def test_a_pending_retry_waits_in_the_database_and_survives_a_scheduler_restart(
    api, stack, recorder
):
    recorder.answer(Reply(status=503, body={"down": True}))
    publish(
        api,
        "retry-later",
        definition(
            http_step(
                "call",
                recorder.url,
                retry={"max_attempts": 2, "backoff": "fixed", "delay_seconds": 3},
            ),
            event="com.example.later",
        ),
    )
    scheduler = stack.processes["scheduler"].args
    stack.stop("scheduler")
    try:
        run_id = run_of(send(api, cloudevent("com.example.later"))).pk
        pending = wait_until(
            lambda: status_of(run_id, "call", 2) == "queued" and attempt(run_id, "call", 2),
            timeout=60,
            message="the retry to be scheduled",
        )
        wait_until(
            lambda: celery_messages_in_redis() == 0,
            timeout=60,
            message="the first attempt's message to be acknowledged",
        )
        # Nothing in Redis holds the retry: no message with an ETA, only a row with a time.
        assert pending.not_before > pending.created_at
        assert pending.enqueued_at is None
        wait_until(
            lambda: timezone.now() > pending.not_before + timedelta(seconds=1),
            timeout=60,
            message="the retry to fall due",
        )
        assert status_of(run_id, "call", 2) == "queued"  # no scheduler, nobody fires it
        assert celery_messages_in_redis() == 0
    finally:
        stack.start("scheduler", scheduler)

    run = finished(run_id)
    assert run.status == "succeeded", run.error
    assert len(recorder.requests) == 2


def test_a_delay_survives_a_restart_of_every_process(api, stack):
    publish(
        api,
        "sleeper",
        definition(
            {"id": "pause", "kind": "delay", "config": {"seconds": 2}},
            log_step("after", after=("pause",)),
            event="com.example.sleeper",
        ),
    )
    run_id = run_of(send(api, cloudevent("com.example.sleeper"))).pk
    wait_until(
        lambda: status_of(run_id, "pause") == "waiting", timeout=60, message="the delay to wait"
    )

    stack.stop()
    try:
        wake_at = attempt(run_id, "pause").wake_at
        wait_until(
            lambda: timezone.now() > wake_at + timedelta(seconds=1),
            timeout=60,
            message="the delay to fall due while everything is down",
        )
        assert status_of(run_id, "pause") == "waiting"
        assert attempt(run_id, "after") is None
    finally:
        stack.start_all()
        stack.wait_ready()

    run = finished(run_id)
    assert run.status == "succeeded", run.error
    assert status_of(run_id, "pause") == "succeeded"
    assert StepRun.objects.filter(run_id=run_id, step_id="after", status="succeeded").count() == 1
