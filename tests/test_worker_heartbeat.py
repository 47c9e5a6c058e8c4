"""A dead worker's attempt is recovered by its heartbeat, long before the step's timeout.

The service-level tests run in one uncommitted transaction (`db`), so a running stack's
scheduler, sweeping the same database in real time, cannot see their rows; they move `now`
forward instead of waiting. The heartbeat thread has its own database connection, so its
tests commit (`sent`: transactional, and no Celery message leaves for a stack's worker).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

import psutil
import pytest
from django.db import OperationalError, connection

from tests.durable_runs import (
    Gate,
    attempt,
    finished,
    journal_kinds,
    pool_process_calling,
    run_of,
    start_run_here,
)
from tests.factories import cloudevent, definition, http_step
from tests.test_spine import publish, send
from tests.waiting import wait_until
from workflows.core import engine
from workflows.runs import advance as runs
from workflows.runs import execution, step_heartbeats, sweeps
from workflows.runs.models import Run, StepRun

RETRIED = {"max_attempts": 2, "backoff": "fixed", "delay_seconds": 0}


def long_step(step_id: str = "slow", timeout_seconds: int = 600) -> dict:
    return {
        "id": step_id,
        "kind": "log",
        "config": {"message": "hi"},
        "timeout_seconds": timeout_seconds,
        "retry": RETRIED,
    }


def claimed(slug: str, step: dict, worker: str = "gone-host:4242") -> StepRun:
    """A run whose first attempt a worker claimed (and then, as far as anyone knows, left)."""
    run = start_run_here(slug, step)
    first = attempt(run.pk, step["id"])
    assert execution.claim(first.pk, worker)
    first.refresh_from_db()
    return first


def beaten_at(step_run: StepRun):
    return StepRun.objects.filter(pk=step_run.pk).values_list("heartbeat_at", flat=True).get()


# --- the scheduler's sweep ----------------------------------------------------------------------
def test_claiming_an_attempt_is_its_first_heartbeat(db):
    first = claimed("first-beat", long_step())

    assert first.status == "running"
    assert first.heartbeat_at == first.started_at


def test_an_attempt_whose_worker_stopped_heartbeating_fails_and_is_retried(db):
    first = claimed("lost", long_step())
    limit = step_heartbeats.timeout()
    # Five missed beats of a slow worker (the default 10 s beats, 60 s limit): still alive.
    assert sweeps.enqueue_due_steps(now=first.heartbeat_at + limit - timedelta(seconds=1)) == 0
    assert StepRun.objects.get(pk=first.pk).status == "running"

    sweeps.enqueue_due_steps(now=first.heartbeat_at + limit + timedelta(seconds=13))

    first.refresh_from_db()
    assert (first.status, first.error_code, first.retryable) == (
        "failed",
        "timeout.heartbeat",
        True,
    )
    quiet, most = (limit + timedelta(seconds=13)).total_seconds(), limit.total_seconds()
    assert first.error == (
        f"worker gone-host:4242 stopped heartbeating (last beat {quiet:g}s ago, "
        f"limit {most:g}s); the attempt is presumed lost"
    )
    second = attempt(first.run_id, "slow", 2)
    assert second.status == "queued" and second.enqueued_at is not None  # sent to a worker
    assert Run.objects.get(pk=first.run_id).status == "running"
    assert [k for k in journal_kinds(first.run_id) if k[0] != "run.started"] == [
        ("step.scheduled", "slow", 1),
        ("step.failed", "slow", 1),
        ("step.scheduled", "slow", 2),
    ]


def test_a_lost_worker_is_noticed_by_its_heartbeat_long_before_the_step_times_out(db):
    first = claimed("noticed", long_step(timeout_seconds=86400))
    soon = first.heartbeat_at + step_heartbeats.timeout() + timedelta(seconds=1)

    assert sweeps.expire_leases(now=soon) == 1
    assert StepRun.objects.get(pk=first.pk).error_code == "timeout.heartbeat"


def test_an_attempt_whose_worker_keeps_beating_is_left_alone_until_its_timeout(db):
    # A hung step in a live worker: the heartbeat stays fresh, the step's timeout ends it.
    first = claimed("hung", long_step(timeout_seconds=5))
    started = first.started_at
    StepRun.objects.filter(pk=first.pk).update(heartbeat_at=started + timedelta(seconds=30))

    assert sweeps.expire_leases(now=started + timedelta(seconds=34)) == 0  # 5 s + 30 s grace
    assert StepRun.objects.get(pk=first.pk).status == "running"

    StepRun.objects.filter(pk=first.pk).update(heartbeat_at=started + timedelta(seconds=35))
    assert sweeps.expire_leases(now=started + timedelta(seconds=36)) == 1
    first.refresh_from_db()
    assert (first.status, first.error_code, first.retryable) == ("failed", "timeout", True)
    assert attempt(first.run_id, "slow", 2).status == "queued"


def test_an_attempt_without_a_heartbeat_keeps_the_timeout_rule(db):
    # A row claimed before heartbeats existed: no heartbeat is not a stale heartbeat.
    first = claimed("old-row", long_step(timeout_seconds=5))
    StepRun.objects.filter(pk=first.pk).update(heartbeat_at=None)
    started = first.started_at

    assert sweeps.expire_leases(now=started + timedelta(seconds=34)) == 0
    assert sweeps.expire_leases(now=started + timedelta(seconds=36)) == 1
    assert StepRun.objects.get(pk=first.pk).error_code == "timeout"


def test_a_late_result_or_heartbeat_from_an_attempt_declared_lost_changes_nothing(db):
    first = claimed("late", long_step())
    assert sweeps.expire_leases(now=first.heartbeat_at + timedelta(hours=1)) == 1
    second = attempt(first.run_id, "slow", 2)
    journal_before = journal_kinds(first.run_id)
    rows_before = list(StepRun.objects.filter(run_id=first.run_id).values())

    # The worker was only partitioned away, and finishes after all.
    late = engine.StepFinished("slow", 1, succeeded=True)
    assert runs.record_result(step_run_id=first.pk, happening=late, output={"late": 1}) is False
    assert step_heartbeats.beat(first.pk) is False

    assert journal_kinds(first.run_id) == journal_before
    assert list(StepRun.objects.filter(run_id=first.run_id).values()) == rows_before
    # The retry is what counts: it runs, and the run succeeds on it alone.
    assert execution.execute_step(step_run_id=second.pk) is True
    assert Run.objects.get(pk=first.run_id).status == "succeeded"
    assert [k for k in journal_kinds(first.run_id) if k[0] == "step.succeeded"] == [
        ("step.succeeded", "slow", 2)
    ]


# --- the heartbeat itself -------------------------------------------------------------------------
def renewals(step_run: StepRun, count: int, timeout: float = 30) -> list:
    """Wait until the attempt's heartbeat took `count` new values; return them in order."""
    seen = [beaten_at(step_run)]

    def renewed():
        value = beaten_at(step_run)
        if value != seen[-1]:
            seen.append(value)
        return len(seen) > count

    wait_until(renewed, timeout=timeout, interval=0.01, message=f"{count} heartbeats")
    return seen[1:]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("sent")
def test_the_heartbeat_is_renewed_while_work_runs_and_stops_when_it_ends():
    first = claimed("beating", long_step())

    with step_heartbeats.heartbeating(first.pk, every=0.05) as thread:
        beats = renewals(first, 3)  # the work: as long as three beats take
    after = beaten_at(first)

    assert beats == sorted(beats) and beats[0] > first.started_at
    assert after >= beats[-1]
    assert not thread.is_alive()  # stopped and joined on the way out
    assert StepRun.objects.get(pk=first.pk).status == "running"  # beats only renew


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("sent")
def test_a_heartbeat_never_revives_a_finished_attempt_and_ends_by_itself():
    first = claimed("finished-first", long_step())
    done = engine.StepFinished("slow", 1, succeeded=True)
    assert runs.record_result(step_run_id=first.pk, happening=done)
    beaten = beaten_at(first)

    with step_heartbeats.heartbeating(first.pk, every=0.01) as thread:
        # Its first beat finds the attempt finished, and the thread gives up at once.
        wait_until(lambda: not thread.is_alive(), timeout=30, message="the beating to stop")

    row = StepRun.objects.get(pk=first.pk)
    assert (row.status, row.heartbeat_at) == ("succeeded", beaten)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("sent")
def test_a_database_error_during_a_beat_is_logged_and_beating_goes_on(monkeypatch, caplog):
    first = claimed("hiccup", long_step())
    real_beat = step_heartbeats.beat
    failures = []

    def flaky_beat(step_run_id):
        if not failures:
            failures.append(step_run_id)
            raise OperationalError("server closed the connection unexpectedly")
        return real_beat(step_run_id)

    monkeypatch.setattr(step_heartbeats, "beat", flaky_beat)

    with step_heartbeats.heartbeating(first.pk, every=0.05) as thread:
        renewals(first, 1)
        assert thread.is_alive()

    assert failures == [first.pk]
    assert any(
        r.levelname == "WARNING" and f"heartbeat of attempt {first.pk}" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("sent")
def test_executing_a_step_renews_its_heartbeat_while_the_step_runs(settings):
    settings.SIGNALBOX = {**settings.SIGNALBOX, "STEP_HEARTBEAT_SECONDS": 0.05}
    gate = Gate(hold=1)
    finished_with: list[bool] = []
    try:
        run = start_run_here("held", http_step("call", gate.url))
        call = attempt(run.pk, "call")

        def deliver() -> None:
            try:
                finished_with.append(execution.execute_step(step_run_id=call.pk))
            finally:
                connection.close()

        worker = threading.Thread(target=deliver)
        worker.start()
        wait_until(lambda: gate.requests, timeout=60, message="the step's request")
        started = StepRun.objects.get(pk=call.pk).started_at
        beats = renewals(call, 2)  # while the request is held
        gate.opened.set()
        worker.join(60)
    finally:
        gate.close()

    assert finished_with == [True]
    assert beats[0] > started
    assert attempt(run.pk, "call").status == "succeeded"
    assert not [t for t in threading.enumerate() if t.name == f"step-heartbeat-{call.pk}"]


# --- end to end: a real worker killed mid-step ------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_step_is_replaced_after_its_heartbeat_not_its_timeout(api, stack):
    silence = float(stack.env["SIGNALBOX_STEP_HEARTBEAT_TIMEOUT_SECONDS"])
    gate = Gate(hold=1)
    try:
        publish(
            api,
            "heartbeat-killed",
            definition(
                http_step(
                    "call",
                    gate.url,
                    # Only the heartbeat can explain a recovery within the test's minute.
                    timeout_seconds=600,
                    retry={"max_attempts": 2, "backoff": "fixed", "delay_seconds": 0.1},
                ),
                event="com.example.heartbeat-killed",
            ),
        )
        run_id = run_of(send(api, cloudevent("com.example.heartbeat-killed"))).pk
        wait_until(lambda: gate.requests, timeout=60, message="the step's request")
        victim = wait_until(
            lambda: pool_process_calling(stack, gate.port),
            timeout=30,
            message="the pool process making the request",
        )
        mid_step = attempt(run_id, "call")
        # The live worker beats while its request is held.
        renewals(mid_step, 1)

        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(
            lambda: not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE,
            timeout=30,
            message="the pool process to die",
        )
        gate.opened.set()
        run = finished(run_id, timeout=silence + 50)
        recovered_in = time.monotonic() - killed
    finally:
        gate.close()

    first, second = attempt(run_id, "call", 1), attempt(run_id, "call", 2)
    assert run.status == "succeeded", run.error
    assert (first.status, first.error_code, first.retryable) == (
        "failed",
        "timeout.heartbeat",
        True,
    )
    assert first.worker.endswith(f":{victim.pid}")
    assert "stopped heartbeating" in first.error
    # Declared lost once its heartbeat had been silent for the whole limit (not sooner),
    # and promptly then: minutes before the step's own timeout could have ended it.
    silent_for = first.finished_at - first.heartbeat_at
    assert timedelta(seconds=silence) <= silent_for < timedelta(seconds=silence + 30)
    assert first.heartbeat_at > first.started_at  # the killed worker had been beating
    assert recovered_in < silence + 50
    assert second.status == "succeeded"
    assert len(gate.requests) == 2 and len(set(gate.keys())) == 1  # one idempotency key
    late = engine.StepFinished("call", 1, succeeded=True)
    assert runs.record_result(step_run_id=first.pk, happening=late) is False
