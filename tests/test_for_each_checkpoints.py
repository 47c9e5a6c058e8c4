"""A retried for_each runs only the items that did not succeed: each item's output is
checkpointed as soon as it succeeds, and the next attempt of the step reuses them.

Runs go through the real services by hand (tests/steps_by_hand.py, the `by_hand` fixture):
ingest, match, execute_step, record_result, the scheduler's sweeps called directly."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from tests.factories import cloudevent, definition
from tests.http_recorder import Recorder, Reply
from tests.steps_by_hand import ByHand, context, step_of
from workflows.infra import circuit
from workflows.runs.item_checkpoints import StepItemCheckpoints, recorded_items
from workflows.runs.models import Run, StepItemResult
from workflows.runs.sweeps import enqueue_due_steps, expire_leases
from workflows.steps import registry
from workflows.steps.base import StepError
from workflows.steps.python import step_function


class WorkerLost(BaseException):
    """The worker going away in the middle of a step. Not an Exception, so nothing in the
    services records a result for the attempt: it stays running until its lease runs out,
    as after a SIGKILL."""


VISITS: list[dict] = []


@step_function("checkpoints.visit")
def visit(input, ctx):
    """Records the call; on attempt 1 only, dies (`die_at`) or fails retryably (`fail_at`)
    at the given index; fails retryably at `fail_always_at` on every attempt."""
    VISITS.append({"attempt": ctx.attempt, "index": input["index"], "key": ctx.idempotency_key})
    if ctx.attempt == 1 and input["index"] == input.get("die_at"):
        raise WorkerLost
    if ctx.attempt == 1 and input["index"] == input.get("fail_at"):
        raise StepError("not yet", retryable=True, code="later")
    if input["index"] == input.get("fail_always_at"):
        raise StepError("still not", retryable=True, code="later")
    return {"index": input["index"], "item": input["item"], "attempt": ctx.attempt}


@pytest.fixture
def visits():
    VISITS.clear()
    yield VISITS
    VISITS.clear()


@pytest.fixture
def hosts(recorder):
    """Two loopback servers: `ok` answers 200; `flaky` answers from its script."""
    flaky = Recorder()
    servers = (recorder, flaky)
    for server in servers:
        circuit.reset(circuit.host_of(server.url))
    yield recorder, flaky
    for server in servers:
        circuit.reset(circuit.host_of(server.url))
    flaky.close()


def visit_loop(*, concurrency: int = 2, retry: int = 3, **behaviour) -> dict:
    return definition(
        {
            "id": "each",
            "kind": "for_each",
            "config": {
                "items": "event.data.items",
                "concurrency": concurrency,
                "do": {
                    "kind": "python",
                    "config": {
                        "function": "checkpoints.visit",
                        "input": {"index": "{{ index }}", "item": "{{ item }}", **behaviour},
                    },
                },
            },
            "retry": {"max_attempts": retry, "delay_seconds": 60},
        }
    )


def run_due_retries(by_hand: ByHand) -> None:
    """The scheduler's sweep enqueues a retry once its back-off has passed; run it by hand.
    (Retries here wait a minute, so nothing runs them before the test says so.)"""
    with transaction.atomic():
        enqueue_due_steps(now=timezone.now() + timedelta(minutes=5))
    by_hand.drain()


def attempts_by_index(run: Run) -> dict[int, int]:
    return dict(
        StepItemResult.objects.filter(run=run, step_id="each").values_list("index", "attempt")
    )


# --- the retry after a failed item ------------------------------------------------------------
def test_a_retried_for_each_calls_again_only_the_item_that_failed(by_hand, hosts):
    ok, flaky = hosts
    flaky.answer(Reply(status=500, body={"error": "busy"}), Reply(body={"item": 3}))
    # Item 3 goes to the flaky server; the others to the one that always answers 200.
    url = "{{ index == 3 ? '" + flaky.url + "' : '" + ok.url + "' }}/items/{{ index }}"
    body = definition(
        {
            "id": "each",
            "kind": "for_each",
            "config": {
                "items": "event.data.items",
                "concurrency": 3,
                "do": {"kind": "http_request", "config": {"url": url, "json": "{{ item }}"}},
            },
            "retry": {"max_attempts": 3, "delay_seconds": 60},
        }
    )

    run = by_hand.run("looping", body, cloudevent(data={"items": ["a", "b", "c", "d", "e"]}))
    first = step_of(run, "each", attempt=1)
    assert (first.status, first.retryable) == ("failed", True)
    assert first.error.startswith("1 of 5 items failed: [3]")

    run_due_retries(by_hand)
    run.refresh_from_db()
    second = step_of(run, "each", attempt=2)

    assert run.status == "succeeded"
    assert sorted(r.path for r in ok.requests) == ["/items/0", "/items/1", "/items/2", "/items/4"]
    assert [r.path for r in flaky.requests] == ["/items/3", "/items/3"]
    assert [r.json() for r in flaky.requests] == ["d", "d"]
    # The same key on both calls of item 3, derived from the step's key (the same on
    # every attempt), so a receiver that deduplicates sees one effect.
    assert first.idempotency_key == second.idempotency_key
    assert {r.headers["Idempotency-Key"] for r in flaky.requests} == {f"{second.idempotency_key}-3"}
    assert sorted(r.headers["Idempotency-Key"] for r in ok.requests) == [
        f"{second.idempotency_key}-{i}" for i in (0, 1, 2, 4)
    ]
    # All five results, in item order: four kept from attempt 1, item 3 from attempt 2.
    assert second.output["count"] == 5
    assert [r["status"] for r in second.output["results"]] == [200] * 5
    assert [r["body"] for r in second.output["results"]] == [
        {"ok": True},
        {"ok": True},
        {"ok": True},
        {"item": 3},
        {"ok": True},
    ]
    assert attempts_by_index(run) == {0: 1, 1: 1, 2: 1, 3: 2, 4: 1}


def test_an_item_that_fails_again_fails_the_retry_with_only_its_error(by_hand, visits):
    body = visit_loop(retry=2, fail_always_at=1)

    run = by_hand.run("looping", body, cloudevent(data={"items": ["a", "b", "c"]}))
    run_due_retries(by_hand)
    run.refresh_from_db()

    assert run.status == "failed"
    assert [v["index"] for v in visits if v["attempt"] == 2] == [1]
    assert step_of(run, "each", attempt=2).error == "1 of 3 items failed: [1] still not"
    assert attempts_by_index(run) == {0: 1, 2: 1}


# --- the retry after a lost worker ------------------------------------------------------------
def test_items_checkpointed_before_the_worker_was_lost_are_not_run_again(by_hand, visits):
    items = ["a", "b", "c", "d", "e"]
    run = by_hand.start("looping", visit_loop(die_at=3), cloudevent(data={"items": items}))

    # Attempt 1: the worker dies at item 3 and records no result for the attempt.
    with pytest.raises(WorkerLost):
        by_hand.drain()
    first = step_of(run, "each", attempt=1)
    assert first.status == "running"
    kept = recorded_items(run_id=run.pk, step_id="each")
    # Items finished before the death are kept (one started alongside it may be too).
    assert {0, 1, 2} <= set(kept) and 3 not in kept
    assert kept[0] == {"index": 0, "item": "a", "attempt": 1}

    # Its lease runs out: attempt 1 fails as lost, attempt 2 runs.
    assert expire_leases(now=timezone.now() + timedelta(hours=1)) == 1
    run_due_retries(by_hand)
    run.refresh_from_db()
    second = step_of(run, "each", attempt=2)

    assert step_of(run, "each", attempt=1).error_code == "timeout.heartbeat"
    assert run.status == "succeeded"
    again = sorted(v["index"] for v in visits if v["attempt"] == 2)
    assert again == sorted(set(range(5)) - set(kept))
    assert 3 in again
    assert {v["key"] for v in visits if v["index"] == 3} == {f"{second.idempotency_key}-3"}
    assert second.output == {
        "results": [
            {"index": i, "item": item, "attempt": 1 if i in kept else 2}
            for i, item in enumerate(items)
        ],
        "count": 5,
    }


def test_a_retry_after_every_item_was_checkpointed_runs_none(by_hand, visits):
    run = by_hand.start("looping", visit_loop(), cloudevent(data={"items": [1, 2]}))
    attempt = step_of(run, "each", attempt=1)
    # The worker had finished every item, then died before recording the step's result.
    store = StepItemCheckpoints(run_id=run.pk, step_id="each", attempt=1, secrets={})
    store.record(0, {"index": 0, "item": 1, "attempt": 1})
    store.record(1, {"index": 1, "item": 2, "attempt": 1})

    by_hand.drain()
    attempt.refresh_from_db()

    assert visits == []
    assert attempt.status == "succeeded"
    assert attempt.output["results"] == [
        {"index": 0, "item": 1, "attempt": 1},
        {"index": 1, "item": 2, "attempt": 1},
    ]


# --- a list that changed between attempts -----------------------------------------------------
@pytest.mark.parametrize(
    ("changed", "run_again"),
    [(["A", "B", "C"], [1]), (["A", "B", "C", "D", "E", "F", "G"], [1, 5, 6])],
    ids=["shorter", "longer"],
)
def test_checkpoints_are_positional_and_those_past_a_shorter_list_are_ignored(
    by_hand,
    visits,
    changed,
    run_again,
):
    run = by_hand.run(
        "looping", visit_loop(fail_at=1), cloudevent(data={"items": ["a", "b", "c", "d", "e"]})
    )
    assert step_of(run, "each", attempt=1).status == "failed"
    assert attempts_by_index(run) == {0: 1, 2: 1, 3: 1, 4: 1}
    # What the items expression reads changes before the retry (a replay's edited input is
    # read the same way); here the run's input is changed directly.
    Run.objects.filter(pk=run.pk).update(input_override={"items": changed})

    run_due_retries(by_hand)
    run.refresh_from_db()
    second = step_of(run, "each", attempt=2)

    assert run.status == "succeeded"
    assert sorted(v["index"] for v in visits if v["attempt"] == 2) == run_again
    # Kept outputs stand for the same positions: they were computed from the old items.
    old = ["a", "b", "c", "d", "e"]
    assert second.output == {
        "results": [
            {"index": i, "item": item, "attempt": 2}
            if i in run_again
            else {"index": i, "item": old[i], "attempt": 1}
            for i, item in enumerate(changed)
        ],
        "count": len(changed),
    }


# --- the checkpoint store ---------------------------------------------------------------------
def test_recording_an_item_twice_keeps_the_first_output(by_hand):
    run = by_hand.start("looping", visit_loop(), cloudevent(data={"items": [1]}))
    first = StepItemCheckpoints(run_id=run.pk, step_id="each", attempt=1, secrets={})
    late = StepItemCheckpoints(run_id=run.pk, step_id="each", attempt=2, secrets={})

    first.record(0, {"v": "first"})
    late.record(0, {"v": "late"})
    late.record(1, None)

    assert late.done() == {0: {"v": "first"}, 1: None}
    assert attempts_by_index(run) == {0: 1, 1: 2}
    assert recorded_items(run_id=run.pk, step_id="other") == {}


def test_a_checkpointed_output_is_stored_with_secrets_masked(by_hand):
    run = by_hand.start("looping", visit_loop(), cloudevent(data={"items": [1]}))
    store = StepItemCheckpoints(
        run_id=run.pk, step_id="each", attempt=1, secrets={"token": "s3cret-value"}
    )

    store.record(0, {"echo": "Bearer s3cret-value"})

    stored = StepItemResult.objects.get(run=run, step_id="each", index=0).output
    assert "s3cret-value" not in json.dumps(stored)


# --- the kind without the services ------------------------------------------------------------
class MemoryCheckpoints:
    def __init__(self, done: dict | None = None):
        self.kept = dict(done or {})
        self.recorded: list[int] = []

    def done(self):
        return dict(self.kept)

    def record(self, index, output):
        self.recorded.append(index)
        self.kept.setdefault(index, output)


def test_the_kind_runs_only_missing_items_and_records_each_success():
    store = MemoryCheckpoints({1: "kept", 7: "stale"})
    config = {
        "items": "[1, 2, 3]",
        "concurrency": 2,
        "do": {"kind": "transform", "config": {"output": "{{ item * 10 }}"}},
    }

    output = registry.get("for_each").execute(config, context(checkpoints=store))

    assert output == {"results": [10, "kept", 30], "count": 3}
    assert sorted(store.recorded) == [0, 2]


def test_an_item_that_crashes_fails_the_loop_with_its_error_and_keeps_the_successes(
    monkeypatch,
):
    transform = registry.get("transform")
    real = type(transform).execute

    def buggy(self, config, ctx):
        if ctx.scope["index"] == 1:
            raise RuntimeError("a bug")
        return real(self, config, ctx)

    monkeypatch.setattr(type(transform), "execute", buggy)
    store = MemoryCheckpoints()
    config = {
        "items": "[1, 2, 3]",
        "concurrency": 1,
        "do": {"kind": "transform", "config": {"output": "{{ item }}"}},
    }

    # Not a StepError: execute_step records it as a crash (not retryable).
    with pytest.raises(RuntimeError, match="a bug"):
        registry.get("for_each").execute(config, context(checkpoints=store))
    assert store.kept[0] == 1 and 1 not in store.kept


def test_without_checkpoints_the_kind_runs_every_item():
    config = {"items": "[1, 2]", "do": {"kind": "transform", "config": {"output": "{{ item }}"}}}

    assert registry.get("for_each").execute(config, context()) == {
        "results": [1, 2],
        "count": 2,
    }


# --- replays ---------------------------------------------------------------------------------
def http_loop(ok_url: str, flaky_url: str, *, flaky_index: int) -> dict:
    url = f"{{{{ index == {flaky_index} ? '{flaky_url}' : '{ok_url}' }}}}/items/{{{{ index }}}}"
    return definition(
        {
            "id": "each",
            "kind": "for_each",
            "config": {
                "items": "event.data.items",
                "concurrency": 2,
                "do": {"kind": "http_request", "config": {"url": url, "json": "{{ item }}"}},
            },
        }
    )


def test_a_replay_that_keeps_keys_and_input_calls_only_the_items_that_never_succeeded(
    by_hand, hosts
):
    from workflows.recovery import replay as replays

    ok, flaky = hosts
    flaky.answer(Reply(status=500, body={"error": "down"}), Reply(body={"item": 1}))
    body = http_loop(ok.url, flaky.url, flaky_index=1)
    run = by_hand.run("looping", body, cloudevent(data={"items": ["a", "b", "c"]}))
    assert run.status == "failed"  # one attempt only: item 1 failed it
    assert sorted(r.path for r in ok.requests) == ["/items/0", "/items/2"]

    replay = replays.replay_run(run_id=run.pk, actor="tests")
    by_hand.drain()
    replay.refresh_from_db()

    assert replay.status == "succeeded"
    # Items 0 and 2 were done by the original with the very keys the replay would send.
    assert sorted(r.path for r in ok.requests) == ["/items/0", "/items/2"]
    assert [r.path for r in flaky.requests] == ["/items/1", "/items/1"]
    original_key = step_of(run, "each").idempotency_key
    assert [r.headers["Idempotency-Key"] for r in flaky.requests] == [f"{original_key}-1"] * 2
    output = step_of(replay, "each").output
    assert [r["body"] for r in output["results"]] == [{"ok": True}, {"item": 1}, {"ok": True}]
    assert recorded_items(run_id=replay.pk, step_id="each").keys() == {1}


def test_a_replay_with_renewed_keys_or_edited_input_runs_every_item_again(by_hand, hosts):
    from workflows.recovery import replay as replays

    ok, flaky = hosts
    flaky.answer(Reply(status=500, body={"error": "down"}))
    body = http_loop(ok.url, flaky.url, flaky_index=1)
    run = by_hand.run("looping", body, cloudevent(data={"items": ["a", "b", "c"]}))
    assert run.status == "failed"
    ok.requests.clear()
    flaky.requests.clear()

    # New keys: the receiver would not recognise the earlier calls, so nothing is skipped.
    renewed = replays.replay_run(run_id=run.pk, actor="tests", renew_idempotency_keys=True)
    by_hand.drain()
    renewed.refresh_from_db()
    assert renewed.status == "succeeded"
    assert sorted(r.path for r in ok.requests) == ["/items/0", "/items/2"]
    assert [r.path for r in flaky.requests] == ["/items/1"]

    # Edited input: other items, so the original's outputs say nothing about them.
    ok.requests.clear()
    flaky.requests.clear()
    edited = replays.replay_run(run_id=run.pk, actor="tests", input={"items": ["x", "y", "z"]})
    by_hand.drain()
    edited.refresh_from_db()
    assert edited.status == "succeeded"
    assert sorted(r.json() for r in ok.requests) == ["x", "z"]
    assert [r.json() for r in flaky.requests] == ["y"]


def test_the_replay_preview_says_how_many_items_the_original_finished(by_hand, hosts):
    from workflows.recovery import replay as replays

    ok, flaky = hosts
    flaky.answer(Reply(status=500, body={"error": "down"}))
    body = http_loop(ok.url, flaky.url, flaky_index=1)
    run = by_hand.run("looping", body, cloudevent(data={"items": ["a", "b", "c"]}))

    kept = "step each (for_each) keeps the 2 item(s) the original finished"
    assert any(w.startswith(kept) for w in replays.plan_replay(run=run).warnings)
    renewed = replays.plan_replay(run=run, renew_idempotency_keys=True)
    assert not any(w.startswith(kept) for w in renewed.warnings)
