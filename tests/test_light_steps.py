"""Light steps: one transaction each, the next one in the same task, only what they name loaded.

A light kind (the registry's `light` flag: pure, never waits) is claimed, run, recorded and
its run advanced in one transaction; the first light step it makes ready runs in the same
task, within a budget. Side-effecting kinds keep claim-before-effect. Steps load only the
upstream outputs and secrets their config names.
"""

from __future__ import annotations

import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from tests.durable_runs import start_run_here
from tests.factories import definition, http_step, log_step
from workflows.access.secrets import set_secret
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.core import engine
from workflows.core.definition import Step
from workflows.events.bus import Delivery
from workflows.infra import crypto
from workflows.management.commands import consume_bus
from workflows.runs import advance as runs
from workflows.runs import execution
from workflows.runs.execution import ALL, References, references_in, step_references
from workflows.runs.models import Run, RunJournal, StepRun
from workflows.runs.projections import differences
from workflows.steps import registry

pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, tuple]]:
    """Celery messages this process would send, recorded instead of sent."""
    from workflows import tasks

    recorded: list[tuple[str, tuple]] = []
    for task in (tasks.execute_step_task, tasks.run_finished_task):

        def apply_async(args=None, kwargs=None, _name=task.name, **options):
            recorded.append((_name, tuple(args or ())))

        monkeypatch.setattr(task, "apply_async", apply_async)
    return recorded


def chain(length: int) -> list[dict]:
    """log and transform in turn, each after the one before."""
    steps = []
    for index in range(length):
        step = (
            {"id": f"s{index}", "kind": "transform", "config": {"output": {"n": index}}}
            if index % 2
            else log_step(f"s{index}", message=f"step {index} of {{{{ run.id }}}}")
        )
        if index:
            step["after"] = [f"s{index - 1}"]
        steps.append(step)
    return steps


def first_attempt(run: Run, step_id: str = "s0") -> StepRun:
    return StepRun.objects.get(run=run, step_id=step_id, attempt=1)


def journal_kinds(run: Run) -> list[tuple[str, str]]:
    return [
        (kind, data.get("step", ""))
        for kind, data in RunJournal.objects.filter(run=run)
        .order_by("seq")
        .values_list("kind", "data")
    ]


# --- the registry says which kinds are light ---------------------------------------------------
def test_light_kinds_are_the_pure_ones_and_none_has_side_effects():
    kinds = registry.all_kinds()
    light = {name for name, kind in kinds.items() if kind.light}

    assert light == {"log", "transform", "condition", "switch", "filter", "fail"}
    assert not [name for name in light if kinds[name].side_effects]
    for name in ("http_request", "send_email", "emit_event", "python", "sub_workflow"):
        assert not kinds[name].light, name
    for name in ("delay", "wait_for_event", "for_each"):
        assert not kinds[name].light, name


# --- a chain of light steps ------------------------------------------------------------------
def test_a_chain_of_light_steps_runs_in_one_task_and_journals_every_step(sent):
    run = start_run_here("light-chain", *chain(6))
    sent.clear()  # the first step's own message

    assert execution.execute_step(step_run_id=first_attempt(run).pk, worker="w1") is True

    run.refresh_from_db()
    steps = StepRun.objects.filter(run=run).order_by("id")
    assert run.status == "succeeded"
    assert [(s.step_id, s.status, s.worker) for s in steps] == [
        (f"s{i}", "succeeded", "w1") for i in range(6)
    ]
    assert all(s.started_at and s.finished_at and s.started_at <= s.finished_at for s in steps)
    assert sent == []  # no message per step (and no follow-up: no limits, no parent)
    kinds = journal_kinds(run)
    for index in range(6):
        step = f"s{index}"
        order = [kinds.index(("step.scheduled", step)), kinds.index(("step.started", step))]
        order.append(kinds.index(("step.succeeded", step)))
        assert order == sorted(order), step
    assert differences(run) == []  # the rows are what the journal rebuilds


def test_a_light_step_is_one_transaction_locking_the_run_once_with_a_handful_of_statements(
    sent,
):
    run = start_run_here("light-count", *chain(6))

    with CaptureQueriesContext(connection) as captured:
        execution.execute_step(step_run_id=first_attempt(run).pk)

    statements = [q["sql"] for q in captured.captured_queries]
    commits = [i for i, sql in enumerate(statements) if sql.startswith("COMMIT")]
    assert len(commits) == 6  # one transaction per step
    # The middle steps (not the first, nor the last that finishes the run).
    for start, end in itertools.pairwise(commits[:4]):
        step = [s for s in statements[start + 1 : end] if not s.startswith(TRANSACTION_CONTROL)]
        assert sum("FOR UPDATE" in s for s in step) == 1, step
        # lock + attempt, claim and result, next attempt, journal, run: the state is not
        # read again when the run did not move since this task's previous step.
        assert len(step) <= 5, step


def test_the_state_a_task_carries_between_its_steps_is_what_the_database_holds(sent, monkeypatch):
    body = definition(
        log_step("first"),
        {"id": "check", "kind": "condition", "config": {"expression": "1 > 2"}, "after": ["first"]},
        log_step("big"),
        log_step("small"),
        log_step("done"),
        event="com.example.branches",
    )
    body["edges"] = [
        {"from": "check", "to": "big", "port": "true"},
        {"from": "check", "to": "small", "port": "false"},
        {"from": "big", "to": "done"},
        {"from": "small", "to": "done"},
    ]
    put_workflow(slug="branches", raw=body)
    version = publish_workflow(slug="branches")
    run = Run.objects.create(workflow=version.workflow, version=version)
    runs.advance_run(run_id=run.pk, happening=engine.RunStarted())
    carried = []
    real = runs._advance_locked

    def checking(run, happening, continuation, state):
        if state is not None:
            carried.append((happening.step_id, state == runs.run_state(run)))
        return real(run, happening, continuation, state)

    monkeypatch.setattr(runs, "_advance_locked", checking)
    execution.execute_step(step_run_id=first_attempt(run, "first").pk)

    steps = dict(StepRun.objects.filter(run=run).values_list("step_id", "status"))
    assert steps == {
        "first": "succeeded",
        "check": "succeeded",
        "big": "skipped",
        "small": "succeeded",
        "done": "succeeded",
    }
    assert carried == [("check", True), ("small", True), ("done", True)]


def test_a_run_moved_by_someone_else_between_two_steps_is_read_again(sent):
    run = start_run_here("moved", *chain(2))
    carried = runs.Continuation(known=(run.seq, runs.run_state(run)))
    finished = engine.StepFinished("s0", 1, succeeded=True)

    assert runs.known_state(run, carried, finished).steps["s0"].status == "succeeded"
    run.seq += 1  # what any journaled move under the lock does
    assert runs.known_state(run, carried, finished) is None


def test_the_same_light_attempt_delivered_twice_runs_once(sent):
    run = start_run_here("light-twice", log_step("only"))
    only = first_attempt(run, "only")

    assert execution.execute_step(step_run_id=only.pk) is True
    journal_before = journal_kinds(run)
    assert execution.execute_step(step_run_id=only.pk) is False

    assert journal_kinds(run) == journal_before
    assert journal_before.count(("step.started", "only")) == 1


def test_a_light_attempt_claimed_by_another_worker_is_left_to_it(sent):
    run = start_run_here("light-claimed", log_step("only"))
    only = first_attempt(run, "only")
    assert execution.claim(only.pk, "elsewhere")

    assert execution.execute_step(step_run_id=only.pk, worker="here") is False

    only.refresh_from_db()
    assert (only.status, only.worker) == ("running", "elsewhere")


def test_inline_steps_stop_at_the_budget_and_the_rest_goes_back_to_the_queue(sent, monkeypatch):
    monkeypatch.setattr(execution, "INLINE_MAX_STEPS", 2)
    run = start_run_here("light-budget", *chain(5))
    sent.clear()

    execution.execute_step(step_run_id=first_attempt(run).pk)

    done = set(
        StepRun.objects.filter(run=run, status="succeeded").values_list("step_id", flat=True)
    )
    assert done == {"s0", "s1", "s2"}  # its own step and two more
    assert sent == [("signalbox.execute_step", (first_attempt(run, "s3").pk,))]


def test_a_failing_light_step_retries_from_the_database_not_inline(sent):
    run = start_run_here(
        "light-retry",
        log_step("a"),
        {
            "id": "b",
            "kind": "fail",
            "config": {"message": "no", "code": "x"},
            "after": ["a"],
            "retry": {
                "max_attempts": 2,
                "backoff": "fixed",
                "delay_seconds": 60,
                "retry_on": ["fail.x"],
            },
        },
    )
    sent.clear()

    execution.execute_step(step_run_id=first_attempt(run, "a").pk)

    retry = StepRun.objects.get(run=run, step_id="b", attempt=2)
    assert first_attempt(run, "b").status == "failed"
    assert (retry.status, retry.enqueued_at) == ("queued", None) and retry.not_before
    assert sent == []


# --- side-effecting steps keep claim-before-effect -------------------------------------------
class Witness:
    """A loopback HTTP server that, while answering, reads (on its own connection) what the
    database holds committed about the step calling it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    step = StepRun.objects.get(step_id="call")
                    kinds = list(
                        RunJournal.objects.filter(run_id=step.run_id)
                        .order_by("seq")
                        .values_list("kind", flat=True)
                    )
                    witness.seen.append((step.status, kinds))
                finally:
                    connections.close_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/call"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def witness():
    server = Witness()
    yield server
    server.close()


def test_a_side_effecting_step_is_claimed_and_journaled_before_its_effect(sent, witness):
    run = start_run_here(
        "claim-first", log_step("before"), http_step("call", witness.url, after=("before",))
    )
    sent.clear()

    execution.execute_step(step_run_id=first_attempt(run, "before").pk)
    # `before` was light; `call` has side effects: it was sent as a message, not run inline.
    call = first_attempt(run, "call")
    assert sent == [("signalbox.execute_step", (call.pk,))]
    execution.execute_step(step_run_id=call.pk)

    ((status, kinds),) = witness.seen
    assert status == "running"  # claimed, and the claim committed, before the request
    assert kinds[-1] == "step.started"
    assert first_attempt(run, "call").status == "succeeded"


def test_the_light_step_after_a_side_effecting_one_runs_in_the_same_task(sent, witness):
    run = start_run_here(
        "effect-then-light", http_step("call", witness.url), log_step("after", after=("call",))
    )
    sent.clear()

    execution.execute_step(step_run_id=first_attempt(run, "call").pk)

    assert first_attempt(run, "after").status == "succeeded"
    assert sent == []


def test_a_side_effecting_steps_result_does_not_read_its_runs_version_and_event_again(
    sent, witness
):
    run = start_run_here("read-once", http_step("call", witness.url))
    sent.clear()

    with CaptureQueriesContext(connection) as captured:
        execution.execute_step(step_run_id=first_attempt(run, "call").pk)

    assert first_attempt(run, "call").status == "succeeded"
    locks = [q["sql"] for q in captured.captured_queries if "FOR UPDATE" in q["sql"]]
    assert len(locks) == 2, locks  # the claim, then the result: each locks the run
    joined = [sql for sql in locks if '"workflows_workflowversion"' in sql]
    assert len(joined) == 1, joined  # the claim's read is taken again for the result


# --- only what a step names is loaded --------------------------------------------------------
def test_references_are_read_from_the_expressions_a_step_holds():
    found = references_in(["steps.a.output.x + steps['b-c'].port", "secrets.token"])
    assert found == References(steps=frozenset({"a", "b-c"}), secrets=frozenset({"token"}))
    # A root's name in a string literal is read as a use of it: more is loaded, never less.
    assert references_in(['"steps" + event.data']).steps is ALL
    assert references_in(["steps[name].output"]).steps is ALL
    assert references_in(["size(secrets) > 0"]).secrets is ALL
    assert references_in(["event.data.steps + vars.secrets"]) == References(
        frozenset(), frozenset()
    )


def test_a_step_reads_its_templates_and_expression_fields_but_not_plain_text():
    log = Step(
        "l", "log", {"message": "3 steps and secrets done, {{ steps.a.output }} {{ secrets.k }}"}
    )
    # A log message is not secret-capable: the secret it names is not loaded (and the step
    # is refused before rendering, see test_secrets_by_design.py).
    assert step_references(log, registry.get("log")) == References(frozenset({"a"}), frozenset())
    http = Step(
        "h",
        "http_request",
        {"url": "http://x/{{ steps.a.output }}", "headers": {"A": "{{ secrets.k }}"}},
    )
    assert step_references(http, registry.get("http_request")) == References(
        frozenset({"a"}), frozenset({"k"})
    )
    condition = Step("c", "condition", {"expression": "steps.b.output.ok"})
    assert step_references(condition, registry.get("condition")).steps == {"b"}
    inner = {"kind": "transform", "config": {"output": "{{ item }} {{ steps.d.output }}"}}
    loop = Step("f", "for_each", {"items": "steps.e.output", "do": inner})
    assert step_references(loop, registry.get("for_each")).steps == {"d", "e"}


def test_code_steps_get_every_output_but_only_the_secrets_marked_for_them():
    python = Step("p", "python", {"function": "tests.anything"})
    assert step_references(python, registry.get("python")) == References(ALL, frozenset())
    marked = Step(
        "p", "python", {"function": "tests.anything", "secret_input": {"k": "{{ secrets.s }}"}}
    )
    assert step_references(marked, registry.get("python")) == References(ALL, frozenset({"s"}))
    loop = Step("f", "for_each", {"items": "[1]", "do": {"kind": "python", "config": {}}})
    assert step_references(loop, registry.get("for_each")) == References(ALL, frozenset())


def test_a_step_loads_only_the_outputs_and_secrets_it_names(sent, monkeypatch):
    set_secret(name="used", value="used-secret-value")
    set_secret(name="unused", value="unused-secret-value")
    decrypted = []
    real_decrypt = crypto.decrypt
    monkeypatch.setattr(
        crypto, "decrypt", lambda token: decrypted.append(token) or real_decrypt(token)
    )
    run = start_run_here(
        "named-only",
        {"id": "a", "kind": "transform", "config": {"output": {"v": "from a"}}},
        {"id": "b", "kind": "transform", "config": {"output": {"v": "from b"}}, "after": ["a"]},
        {
            "id": "c",
            "kind": "transform",
            "config": {"output": {"a": "{{ steps.a.output.v }}"}},
            "after": ["b"],
        },
    )
    calls = Step("h", "http_request", {"url": "http://x", "headers": {"A": "{{ secrets.used }}"}})

    with CaptureQueriesContext(connection) as captured:
        execution.execute_step(step_run_id=first_attempt(run, "a").pk)

    assert first_attempt(run, "c").output == {"a": "from a"}
    assert decrypted == []  # no step named a secret
    loaded = execution.step_secrets(step_references(calls, registry.get("http_request")))
    assert loaded == {"used": "used-secret-value"} and len(decrypted) == 1
    upstream = [
        q["sql"]
        for q in captured.captured_queries
        if '"workflows_steprun"."output"' in q["sql"] and "succeeded" in q["sql"]
    ]
    assert len(upstream) == 1 and "'a'" in upstream[0] and "'b'" not in upstream[0]


# --- the bus consumer matches partitions side by side -----------------------------------------
def test_the_bus_consumer_groups_deliveries_by_partition_keeping_their_order():
    deliveries = [Delivery("p0", "1-0", 1), Delivery("p1", "1-1", 2), Delivery("p0", "2-0", 3)]

    groups = consume_bus.by_partition(deliveries)

    assert [[d.event_id for d in group] for group in groups] == [[1, 3], [2]]


def test_a_failing_partition_stops_only_its_own_rest():
    from concurrent.futures import ThreadPoolExecutor

    handled: list[int] = []
    lock = threading.Lock()

    def handle(delivery: Delivery) -> None:
        if delivery.event_id == 1:
            raise ValueError("poison")
        with lock:
            handled.append(delivery.event_id)

    groups = [
        [Delivery("p0", "1-0", 1), Delivery("p0", "2-0", 3)],
        [Delivery("p1", "1-1", 2), Delivery("p1", "2-1", 4)],
    ]

    def handle_group(group: list[Delivery]) -> None:
        for delivery in group:
            handle(delivery)

    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="poison"):
        consume_bus.handle_partitions(groups, handle_group, pool)

    assert sorted(handled) == [2, 4]  # p0's 3 stays pending behind its failed 1


# --- workers keep their database connection ----------------------------------------------------
def test_workers_keep_their_database_connection_between_tasks():
    from orchestrator.celery import app

    # Celery's Django fixup closes every connection around every task unless this is set.
    assert app.conf.get("CELERY_DB_REUSE_MAX")


def test_an_eagerly_applied_task_leaves_its_callers_connection_alone(sent):
    from workflows import tasks

    run = start_run_here("eager", log_step("only"))
    execution.execute_step(step_run_id=first_attempt(run, "only").pk)
    connection.ensure_connection()
    before = connection.connection

    tasks.run_finished_task.apply(args=[run.pk]).get()

    assert connection.connection is before


def test_an_output_the_database_cannot_hold_fails_the_attempt_at_once(sent, monkeypatch):
    monkeypatch.setenv("SIGNALBOX_PYTHON_MODULES", "tests.python_steps")
    run = start_run_here(
        "unstorable", {"id": "s0", "kind": "python", "config": {"function": "tests.not_a_number"}}
    )

    execution.execute_step(step_run_id=first_attempt(run).pk)

    attempt = first_attempt(run)
    run.refresh_from_db()
    # The python step refuses it itself (python.output); other kinds meet storable().
    assert (attempt.status, attempt.error_code, attempt.output) == ("failed", "python.output", None)
    assert run.status == "failed"


def test_a_light_step_whose_output_cannot_be_stored_fails_in_its_own_transaction(sent):
    run = start_run_here(
        "unstorable-light",
        {"id": "s0", "kind": "transform", "config": {"output": {"n": 1}}},
    )
    real = registry.get("transform").execute

    def infinite(config, ctx):
        return {**real(config, ctx), "too_big": float("inf")}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry.get("transform"), "execute", infinite)
        execution.execute_step(step_run_id=first_attempt(run).pk)

    attempt = first_attempt(run)
    assert (attempt.status, attempt.error_code) == ("failed", "output")


def test_a_step_that_crashes_shows_no_python_internals(sent):
    run = start_run_here("crashing", {"id": "s0", "kind": "transform", "config": {"output": 1}})

    def crash(config, ctx):
        raise TypeError("<function secret_helper at 0x7f00> got an unexpected keyword")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry.get("transform"), "execute", crash)
        execution.execute_step(step_run_id=first_attempt(run).pk)

    attempt = first_attempt(run)
    assert (attempt.status, attempt.error_code) == ("failed", "crash")
    assert "TypeError" not in attempt.error and "0x7f00" not in attempt.error
    assert "transform step failed unexpectedly" in attempt.error
