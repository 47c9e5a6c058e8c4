"""Runs survive crashes: killed workers, duplicate deliveries, restarted processes.

The end-to-end tests drive the shared stack's real processes (they kill a Celery pool
process, stop the scheduler, restart everything) and leave it running again. They use the
shared stack rather than one of their own because every stack on the test database sweeps
the same timers: a second scheduler would fire the retry these tests keep waiting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Reply
from tests.test_spine import publish, send
from tests.waiting import wait_until
from workflows import tasks
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.core import engine
from workflows.core.definition import FORMAT_SCHEMA
from workflows.runs import advance as runs
from workflows.runs import control as run_control
from workflows.runs import execution, sweeps
from workflows.runs.models import Run, RunJournal, StepRun
from workflows.runs.projections import differences

pytestmark = pytest.mark.django_db(transaction=True)

FINISHED = ("succeeded", "failed", "cancelled")


class Gate:
    """A loopback HTTP server that records every request and holds the first `hold` of
    them until the test opens the gate, so the test knows a step is mid-request."""

    def __init__(self, hold: int = 0) -> None:
        self.requests: list[dict[str, str]] = []
        self.hold = hold
        self.opened = threading.Event()
        self.lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with gate.lock:
                    gate.requests.append(dict(self.headers.items()))
                    held = len(gate.requests) <= gate.hold
                if held:
                    gate.opened.wait(120)
                payload = json.dumps({"ok": True}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the caller died while we held it

            do_GET = do_PUT = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/gate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        with self.lock:
            return [headers.get("Idempotency-Key", "") for headers in self.requests]

    def close(self) -> None:
        self.opened.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gate():
    server = Gate()
    yield server
    server.close()


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, tuple, dict]]:
    """Celery messages this process would send, recorded instead of sent (a running worker
    would otherwise take them): (task name, args, every other option)."""
    recorded: list[tuple[str, tuple, dict]] = []
    for task in (tasks.execute_step_task, tasks.run_finished_task):

        def apply_async(args=None, kwargs=None, _name=task.name, **options):
            # The queue a step goes to is tested in test_step_queues.py.
            options.pop("queue", None)
            recorded.append((_name, tuple(args or ()), {**options, **(kwargs or {})}))

        monkeypatch.setattr(task, "apply_async", apply_async)
    return recorded


# --- helpers -------------------------------------------------------------------------------
def start_run_here(slug: str, *steps: dict) -> Run:
    """Publish a workflow and start a run of it in this process (no event, no bus)."""
    put_workflow(slug=slug, raw=definition(*steps, event=f"com.example.{slug}"))
    version = publish_workflow(slug=slug)
    run = Run.objects.create(workflow=version.workflow, version=version)
    runs.advance_run(run_id=run.pk, happening=engine.RunStarted())
    return run


def attempt(run_id: int, step_id: str, number: int = 1) -> StepRun | None:
    return StepRun.objects.filter(run_id=run_id, step_id=step_id, attempt=number).first()


def status_of(run_id: int, step_id: str, number: int = 1) -> str:
    return getattr(attempt(run_id, step_id, number), "status", "")


def run_of(event_id: int) -> Run:
    return wait_until(
        lambda: Run.objects.filter(event_id=event_id).first(),
        timeout=60,
        message=f"a run of event {event_id}",
    )


def finished(run_id: int, timeout: float = 60) -> Run:
    return wait_until(
        lambda: Run.objects.filter(pk=run_id, status__in=FINISHED).first(),
        timeout=timeout,
        message=f"run {run_id} to finish",
    )


def journal_kinds(run_id: int) -> list[tuple[str, str, int]]:
    return [
        (e.kind, e.data.get("step", ""), e.data.get("attempt", 0))
        for e in RunJournal.objects.filter(run_id=run_id).order_by("seq")
    ]


def celery_messages_in_redis() -> int:
    """Messages waiting in our Celery queues, or taken by a worker and not yet acknowledged
    (where a task sent with an ETA would sit until its time)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
    try:
        count = 0
        for key in client.scan_iter(match=f"{prefix}*"):
            kind = client.type(key)
            if kind == b"list":
                count += client.llen(key)
            elif kind == b"hash" and key.endswith(b"unacked"):
                count += client.hlen(key)
        return count
    finally:
        client.close()


def pool_process_calling(stack, port: int) -> psutil.Process | None:
    """The Celery pool process with a connection open to loopback `port`."""
    for child in psutil.Process(stack.processes["worker"].pid).children(recursive=True):
        try:
            if any(c.raddr and c.raddr.port == port for c in child.net_connections("tcp")):
                return child
        except psutil.Error:
            continue
    return None


def worker_log(stack) -> str:
    return stack.log_tail("worker", lines=1_000_000)


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


# --- crashes -----------------------------------------------------------------------------------
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


# --- Celery and Redis' visibility timeout ------------------------------------------------------
def test_steps_retries_and_finished_runs_are_sent_without_eta_or_countdown(sent):
    run = start_run_here(
        "no-eta",
        {
            "id": "flaky",
            "kind": "log",
            "config": {"message": "hi"},
            "retry": {"max_attempts": 2, "backoff": "fixed", "delay_seconds": 600, "jitter": False},
        },
    )
    first = attempt(run.pk, "flaky")
    assert execution.claim(first.pk, "here")
    runs.record_result(
        step_run_id=first.pk,
        happening=engine.StepFinished(
            "flaky", 1, succeeded=False, retryable=True, error="try again", code="network"
        ),
    )
    second = attempt(run.pk, "flaky", 2)
    sent_before_due = list(sent)

    assert sweeps.enqueue_due_steps(now=second.not_before - timedelta(seconds=1)) == 0
    assert sweeps.enqueue_due_steps(now=second.not_before + timedelta(seconds=1)) == 1
    assert execution.execute_step(step_run_id=second.pk) is True

    assert sent_before_due == [("signalbox.execute_step", (first.pk,), {})]  # retry: a DB row
    assert sent == [
        ("signalbox.execute_step", (first.pk,), {}),
        ("signalbox.execute_step", (second.pk,), {}),
        ("signalbox.run_finished", (run.pk,), {}),
    ]


def test_redis_visibility_timeout_outlasts_the_longest_step_lease():
    from orchestrator.celery import app

    step_schema = FORMAT_SCHEMA["properties"]["steps"]["items"]["properties"]
    longest_lease = step_schema["timeout_seconds"]["maximum"] + runs.LEASE_GRACE.total_seconds()

    assert app.conf.broker_transport_options["visibility_timeout"] > longest_lease
    assert runs.DEFAULT_STEP_TIMEOUT.total_seconds() < longest_lease
    assert runs.REENQUEUE_AFTER.total_seconds() < longest_lease


def test_every_task_is_acknowledged_late_and_rejected_when_its_worker_is_lost():
    from orchestrator.celery import app

    app.loader.import_default_modules()
    ours = {name: task for name, task in app.tasks.items() if name.startswith("signalbox.")}

    assert {"signalbox.execute_step", "signalbox.run_finished"} <= set(ours)
    for name, task in ours.items():
        assert (task.acks_late, task.reject_on_worker_lost) == (True, True), name


def test_no_code_sends_a_task_with_an_eta_or_a_countdown():
    root = Path(__file__).resolve().parent.parent
    timed = re.compile(r"\b(eta|countdown)\s*=|apply_async\(")
    found = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for folder in ("workflows", "dashboard", "orchestrator")
        for path in (root / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if timed.search(line)
    ]

    assert found == []
