"""Runs survive duplicates and lost messages: an attempt's result is recorded once (fencing),
a step delivered twice runs once, and a finished run's lost follow-ups are made good.

Crashes and restarts are in test_durability_crashes.py, Celery's delivery settings in
test_celery_delivery.py. Celery messages this process would send are recorded instead
(the `sent` fixture, tests/conftest.py).

The end-to-end tests drive the shared stack's real processes (they kill a Celery pool
process, stop the scheduler, restart everything) and leave it running again. They use the
shared stack rather than one of their own because every stack on the test database sweeps
the same timers: a second scheduler would fire the retry these tests keep waiting.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from tests.durable_runs import (
    Gate,
    attempt,
    finished,
    journal_kinds,
    run_of,
    start_run_here,
    status_of,
    worker_log,
)
from tests.factories import cloudevent, definition, http_step, log_step
from tests.test_spine import publish, send
from tests.waiting import wait_until
from workflows import tasks
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.core import engine
from workflows.runs import advance as runs
from workflows.runs import control as run_control
from workflows.runs import execution, sweeps
from workflows.runs.models import Run, StepRun
from workflows.runs.projections import differences

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gate():
    server = Gate()
    yield server
    server.close()


# --- fencing: an attempt's result is recorded once --------------------------------------------
def test_record_result_refuses_an_attempt_that_is_not_running(sent):
    run = start_run_here("fenced", log_step("only"))
    queued = attempt(run.pk, "only")
    late = engine.StepFinished("only", 1, succeeded=False, error="late", code="crash")

    assert runs.record_result(step_run_id=queued.pk, happening=late) is False  # never started
    assert execution.execute_step(step_run_id=queued.pk) is True
    journal_before = journal_kinds(run.pk)
    row_before = StepRun.objects.filter(pk=queued.pk).values().get()

    assert runs.record_result(step_run_id=queued.pk, happening=late) is False  # finished
    assert runs.record_result(step_run_id=queued.pk, happening=late, from_status="waiting") is False
    assert journal_kinds(run.pk) == journal_before
    assert StepRun.objects.filter(pk=queued.pk).values().get() == row_before
    assert Run.objects.get(pk=run.pk).status == "succeeded"


def test_an_expired_lease_fails_the_attempt_retryably_and_fences_out_its_late_result(sent):
    run = start_run_here(
        "leased",
        {
            "id": "slow",
            "kind": "log",
            "config": {"message": "hi"},
            "timeout_seconds": 5,
            "retry": {"max_attempts": 2, "backoff": "fixed", "delay_seconds": 0},
        },
    )
    first = attempt(run.pk, "slow")
    assert execution.claim(first.pk, "lost-worker")  # a worker took it, then vanished

    assert sweeps.expire_leases(now=timezone.now() + timedelta(seconds=5)) == 0  # still leased
    later = timezone.now() + timedelta(seconds=5) + runs.LEASE_GRACE + timedelta(seconds=1)
    assert sweeps.expire_leases(now=later) == 1
    late = runs.record_result(
        step_run_id=first.pk, happening=engine.StepFinished("slow", 1, succeeded=True)
    )

    first.refresh_from_db()
    assert (first.status, first.error_code, first.retryable) == ("failed", "timeout", True)
    assert late is False
    assert status_of(run.pk, "slow", 2) == "queued"
    assert execution.execute_step(step_run_id=attempt(run.pk, "slow", 2).pk) is True
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert [k for k in journal_kinds(run.pk) if k[0] == "step.succeeded"] == [
        ("step.succeeded", "slow", 2)
    ]


def test_a_crash_between_claiming_an_attempt_and_journaling_it_leaves_the_attempt_queued(
    sent, monkeypatch
):
    run = start_run_here("atomic-claim", log_step("only"))
    queued = attempt(run.pk, "only")
    real_journal = runs.journal

    def crashing_journal(run, kind, **data):
        if kind == "step.started":
            raise RuntimeError("worker died here")
        real_journal(run, kind, **data)

    monkeypatch.setattr(runs, "journal", crashing_journal)
    with pytest.raises(RuntimeError):
        execution.execute_step(step_run_id=queued.pk)
    queued.refresh_from_db()

    assert (queued.status, queued.started_at, queued.worker) == ("queued", None, "")
    assert differences(Run.objects.get(pk=run.pk)) == []
    monkeypatch.setattr(runs, "journal", real_journal)
    assert execution.execute_step(step_run_id=queued.pk) is True  # the redelivery runs it


# --- duplicate deliveries --------------------------------------------------------------------
def test_executing_the_same_attempt_twice_runs_the_step_once(sent, gate):
    run = start_run_here("twice", http_step("call", gate.url))
    call = attempt(run.pk, "call")

    first = execution.execute_step(step_run_id=call.pk)
    second = execution.execute_step(step_run_id=call.pk)

    assert (first, second) == (True, False)
    assert len(gate.requests) == 1
    assert status_of(run.pk, "call") == "succeeded"


def test_the_execute_step_task_delivered_twice_runs_the_step_once(sent, gate):
    run = start_run_here("task-twice", http_step("call", gate.url))
    call = attempt(run.pk, "call")

    tasks.execute_step_task.apply(args=[call.pk]).get()
    tasks.execute_step_task.apply(args=[call.pk]).get()

    assert len(gate.requests) == 1
    assert [k for k in journal_kinds(run.pk) if k[1] == "call"] == [
        ("step.scheduled", "call", 1),
        ("step.started", "call", 1),
        ("step.succeeded", "call", 1),
    ]


def test_two_deliveries_racing_for_one_attempt_run_the_step_once(sent):
    gate = Gate(hold=1)
    try:
        run = start_run_here("racing", http_step("call", gate.url))
        call = attempt(run.pk, "call")
        results: dict[str, bool] = {}

        def deliver(name: str) -> None:
            try:
                results[name] = execution.execute_step(step_run_id=call.pk, worker=name)
            finally:
                connection.close()

        first = threading.Thread(target=deliver, args=("first",))
        first.start()
        wait_until(lambda: gate.requests, timeout=60, message="the first delivery's request")
        deliver("second")  # while the first is mid-request
        gate.opened.set()
        first.join(60)
    finally:
        gate.close()

    assert results == {"first": True, "second": False}
    assert len(gate.requests) == 1
    assert status_of(run.pk, "call") == "succeeded"


def test_a_message_sent_again_through_redis_after_the_step_finished_does_nothing(api, stack, gate):
    publish(api, "redelivered", definition(http_step("call", gate.url), event="com.example.again"))
    run = finished(run_of(send(api, cloudevent("com.example.again"))).pk)
    journal_before = journal_kinds(run.pk)
    call = attempt(run.pk, "call")

    messages = [tasks.execute_step_task.delay(call.pk).id for _ in range(2)]
    wait_until(
        lambda: all(f"[{m}] succeeded" in worker_log(stack) for m in messages),
        timeout=60,
        message="the worker to run both messages",
    )

    assert run.status == "succeeded"
    assert len(gate.requests) == 1
    assert journal_kinds(run.pk) == journal_before


# --- lost follow-ups of a finished run -------------------------------------------------------
def test_a_parent_step_resumes_even_when_its_finished_child_runs_message_was_lost(sent):
    put_workflow(slug="child", raw=definition(log_step("answer"), event="com.example.unused"))
    publish_workflow(slug="child")
    parent = start_run_here(
        "parent",
        {
            "id": "call",
            "kind": "sub_workflow",
            "config": {"workflow": "child", "input": {}},
        },
    )
    call = attempt(parent.pk, "call")
    assert execution.execute_step(step_run_id=call.pk)  # parks, starts the child
    child = Run.objects.get(parent_step=call)
    assert execution.execute_step(step_run_id=attempt(child.pk, "answer").pk)
    # The child's run_finished message went nowhere (recorded, never delivered).
    assert ("signalbox.run_finished", (child.pk,), {}) in sent
    later = timezone.now() + runs.REENQUEUE_AFTER + timedelta(seconds=1)

    assert sweeps.enqueue_due_steps() == 0  # the message may still come: leave it the chance
    assert status_of(parent.pk, "call") == "waiting"
    assert sweeps.enqueue_due_steps(now=later) == 1
    assert sweeps.enqueue_due_steps(now=later) == 0
    assert Run.objects.get(pk=parent.pk).status == "succeeded"
    assert attempt(parent.pk, "call").output["status"] == "succeeded"


def test_a_queued_run_whose_admission_was_lost_is_started_by_the_scheduler(sent):
    raw = definition(log_step("only"), event="com.example.limited")
    raw["concurrency"] = {"max_runs": 1}
    put_workflow(slug="limited", raw=raw)
    version = publish_workflow(slug="limited")
    first, second = (
        Run.objects.create(workflow=version.workflow, version=version) for _ in range(2)
    )
    for run in (first, second):
        with transaction.atomic():
            run_control.admit(runs.lock_run(run.pk))
    assert execution.execute_step(step_run_id=attempt(first.pk, "only").pk)
    assert ("signalbox.run_finished", (first.pk,), {}) in sent  # and lost
    later = timezone.now() + runs.REENQUEUE_AFTER + timedelta(seconds=1)

    assert Run.objects.get(pk=second.pk).status == "queued"
    assert sweeps.enqueue_due_steps() == 0
    assert sweeps.enqueue_due_steps(now=later) == 1
    assert Run.objects.get(pk=second.pk).status == "running"
    assert ("signalbox.execute_step", (attempt(second.pk, "only").pk,), {}) in sent


def test_attempts_behind_a_backlog_are_not_sent_again_until_it_drains(sent, monkeypatch):
    run = start_run_here("backlogged", log_step("only"))
    only = attempt(run.pk, "only")
    StepRun.objects.filter(pk=only.pk).update(enqueued_at=timezone.now())
    later = timezone.now() + runs.REENQUEUE_AFTER + timedelta(seconds=1)
    sent.clear()

    monkeypatch.setattr(sweeps, "messages_waiting", lambda: 2000)  # a backlog: it may come yet
    assert sweeps.enqueue_due_steps(now=later) == 0
    monkeypatch.setattr(sweeps, "messages_waiting", lambda: None)  # Redis cannot say
    assert sweeps.enqueue_due_steps(now=later) == 0
    monkeypatch.setattr(sweeps, "messages_waiting", lambda: 0)  # drained: it was lost
    assert sweeps.enqueue_due_steps(now=later) == 1
    assert sent == [("signalbox.execute_step", (only.pk,), {})]
