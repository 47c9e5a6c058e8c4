"""Replay: from the failed step, from any step, from the start, with edited input, on the
latest version; the preview; shadow runs; bulk replays; comparing a replay with its original.

Most tests drive runs in this process (`drive` executes each queued step as a worker would),
so every outcome is deterministic; the end-to-end tests at the bottom go through the real
processes and the API.
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Recorder, Reply
from tests.waiting import wait_until
from workflows.access.models import AuditEntry
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.recovery import replay as replays
from workflows.recovery.models import ReplayBatch
from workflows.runs.control import cancel_run
from workflows.runs.execution import execute_step
from workflows.runs.matching import ingest_event, match_event
from workflows.runs.models import Run, RunJournal, StepRun
from workflows.runs.projections import differences, rebuild_run

# --- helpers shared with test_dead_letters and test_redrive -----------------------------------


def publish(slug: str, body: dict):
    put_workflow(slug=slug, raw=body)
    return publish_workflow(slug=slug, published_by="tests")


@contextmanager
def in_this_process():
    """Keep work out of the session's stack, if another test started it: its worker would
    otherwise race this process for the steps it drives."""
    with mock.patch(
        "workflows.runs.advance.enqueue_on_commit", lambda step_run_id, kind=None: None
    ):
        yield


def trigger(slug: str, data=None, **overrides) -> Run:
    """Store an event and match it (what the bus consumer does); return the run it started.

    The event is kept off the bus (marked published without being sent), so a running
    stack's bus consumer cannot match it first."""
    event, _created = ingest_event(
        envelope=from_structured(cloudevent(data=data or {"order": 1}, **overrides)),
        publish=False,
    )
    Event.objects.filter(pk=event.pk).update(published_at=timezone.now(), matched_at=timezone.now())
    with in_this_process():
        runs = [r for r in match_event(event_id=event.pk) if r.workflow.slug == slug]
    assert len(runs) == 1, runs
    return runs[0]


def drive(run: Run) -> Run:
    """Execute the run's queued steps one by one, as a worker would, until none is left."""
    for _ in range(100):
        queued = StepRun.objects.filter(run=run, status="queued").order_by("id").first()
        if queued is None:
            break
        with in_this_process():
            execute_step(step_run_id=queued.pk, worker="tests")
    run.refresh_from_db()
    return run


def steps_of(run: Run) -> dict[str, StepRun]:
    latest: dict[str, StepRun] = {}
    for step_run in StepRun.objects.filter(run=run).order_by("attempt", "id"):
        latest[step_run.step_id] = step_run
    return latest


def calls_to(recorder: Recorder, path: str):
    return [r for r in recorder.requests if r.path == path]


def two_calls(recorder: Recorder) -> dict:
    """Step `first` calls /first, then step `second` calls /second, then `done` logs."""
    return definition(
        http_step("first", f"{recorder.url}/first", config={"json": {"step": "first"}}),
        http_step(
            "second",
            f"{recorder.url}/second",
            after=("first",),
            config={"json": {"step": "second"}},
            retry={"max_attempts": 1},
        ),
        log_step("done", after=("second",)),
    )


@pytest.fixture
def failed_run(db, recorder) -> Run:
    """A run whose first step succeeded and whose second step got a 500 and failed."""
    recorder.answer(Reply(200, {"first": "ok"}), Reply(500, {"error": "down"}))
    publish("two-calls", two_calls(recorder))
    run = drive(trigger("two-calls", {"order": 7}))
    assert run.status == "failed", run.error
    return run


# --- replay from the failed step --------------------------------------------------------------


def test_replay_from_the_failed_step_reuses_what_succeeded_and_runs_the_rest(failed_run, recorder):
    replay = replays.replay_run(run_id=failed_run.pk, actor="alice", reason="the API is back")

    assert replay.origin == "replay" and replay.replay_of_id == failed_run.pk
    assert replay.replay_from_step == "failed"
    reused = steps_of(replay)["first"]
    original_first = steps_of(failed_run)["first"]
    assert reused.status == "succeeded" and reused.reused_from_id == original_first.pk
    assert reused.output == original_first.output and reused.port == original_first.port
    assert reused.worker == "" and reused.started_at is None  # never executed

    replay = drive(replay)

    assert replay.status == "succeeded", replay.error
    assert len(calls_to(recorder, "/first")) == 1
    second_calls = calls_to(recorder, "/second")
    assert len(second_calls) == 2
    assert second_calls[0].headers["Idempotency-Key"] == second_calls[1].headers["Idempotency-Key"]
    assert (
        steps_of(replay)["second"].idempotency_key == steps_of(failed_run)["second"].idempotency_key
    )


def test_the_reused_step_is_journaled_so_the_rows_rebuild_from_the_journal(failed_run):
    replay = drive(replays.replay_run(run_id=failed_run.pk, actor="alice"))
    entry = RunJournal.objects.get(run=replay, kind="step.reused")

    assert entry.data["step"] == "first"
    assert entry.data["reused_from"] == steps_of(failed_run)["first"].pk
    assert differences(replay) == []
    StepRun.objects.filter(run=replay, step_id="first").delete()
    assert differences(replay) == ["step first#1: missing row"]
    rebuild_run(replay)
    rebuilt = steps_of(replay)["first"]
    assert rebuilt.reused_from_id == steps_of(failed_run)["first"].pk
    assert rebuilt.status == "succeeded" and rebuilt.output == steps_of(failed_run)["first"].output
    assert differences(replay) == []


def test_replaying_resolves_the_original_dead_letter_and_audits_who_and_why(failed_run):
    letter = DeadLetter.objects.get(run=failed_run)
    assert letter.kind == "step" and letter.step_id == "second" and letter.resolved_at is None

    replay = replays.replay_run(run_id=failed_run.pk, actor="alice", reason="the API is back")

    letter.refresh_from_db()
    assert letter.resolved_at is not None and letter.resolved_by == "alice"
    assert letter.resolution == f"replayed as run {replay.pk}"
    entry = AuditEntry.objects.get(action="run.replay")
    assert (entry.actor, entry.target_type, entry.target_id) == ("alice", "run", str(failed_run.pk))
    assert entry.reason == "the API is back"
    assert entry.details["replay"] == replay.pk
    assert entry.details["reused"] == ["first"]
    assert entry.details["rerun"] == ["second", "done"]


def test_renewing_idempotency_keys_sends_a_new_key(failed_run, recorder):
    replay = drive(
        replays.replay_run(run_id=failed_run.pk, actor="alice", renew_idempotency_keys=True)
    )

    assert replay.status == "succeeded"
    assert replay.idempotency_base is None
    first_try, second_try = calls_to(recorder, "/second")
    assert first_try.headers["Idempotency-Key"] != second_try.headers["Idempotency-Key"]
    assert second_try.headers["Idempotency-Key"] == steps_of(replay)["second"].idempotency_key


def test_a_replay_of_a_replay_keeps_the_first_runs_keys(failed_run, recorder):
    recorder.answer(Reply(500, {"still": "down"}))
    again = drive(replays.replay_run(run_id=failed_run.pk, actor="alice"))
    assert again.status == "failed"

    third = drive(replays.replay_run(run_id=again.pk, actor="alice"))

    assert third.status == "succeeded"
    assert third.idempotency_base == failed_run.pk
    assert len({r.headers["Idempotency-Key"] for r in calls_to(recorder, "/second")}) == 1
    assert len(calls_to(recorder, "/first")) == 1


# --- other starting points --------------------------------------------------------------------


@pytest.fixture
def chain(db) -> Run:
    publish(
        "chain",
        definition(
            {"id": "a", "kind": "transform", "config": {"output": "{{ event.data.order }}"}},
            {
                "id": "b",
                "kind": "transform",
                "config": {"output": "{{ steps.a.output * 2 }}"},
                "after": ["a"],
            },
            {
                "id": "c",
                "kind": "transform",
                "config": {"output": "{{ steps.b.output + 1 }}"},
                "after": ["b"],
            },
        ),
    )
    run = drive(trigger("chain", {"order": 5}))
    assert run.status == "succeeded"
    return run


def test_replay_from_a_chosen_step_runs_it_and_everything_after_it(chain):
    replay = drive(replays.replay_run(run_id=chain.pk, actor="alice", from_step="b"))

    steps = steps_of(replay)
    assert replay.status == "succeeded"
    assert steps["a"].reused_from_id == steps_of(chain)["a"].pk
    assert steps["b"].reused_from_id is None and steps["b"].worker == "tests"
    assert steps["c"].reused_from_id is None and steps["c"].output == 11


def test_replay_from_the_start_runs_every_step_again(chain):
    replay = drive(replays.replay_run(run_id=chain.pk, actor="alice", from_step="start"))

    assert replay.status == "succeeded"
    assert all(s.reused_from_id is None for s in steps_of(replay).values())
    assert [s.output for s in steps_of(replay).values()] == [5, 10, 11]


def test_replay_with_edited_input_feeds_the_steps_and_records_the_edit(chain):
    replay = drive(
        replays.replay_run(
            run_id=chain.pk,
            actor="alice",
            from_step="start",
            input={"order": 50},
            reason="the order number was wrong",
        )
    )

    assert replay.input_override == {"order": 50}
    assert [s.output for s in steps_of(replay).values()] == [50, 100, 101]
    assert chain.event.data == {"order": 5}  # the stored event is untouched
    entry = AuditEntry.objects.get(action="run.replay")
    assert entry.details["input"] == {"before": {"order": 5}, "after": {"order": 50}}
    assert entry.reason == "the order number was wrong"


def test_replay_on_the_latest_version_reruns_what_changed_and_reuses_the_rest(db):
    publish(
        "evolving",
        definition(
            {"id": "a", "kind": "transform", "config": {"output": "{{ event.data.order }}"}},
            {"id": "b", "kind": "fail", "config": {"message": "bug in v1"}, "after": ["a"]},
        ),
    )
    original = drive(trigger("evolving"))
    assert original.status == "failed"
    v2 = publish(
        "evolving",
        definition(
            {"id": "a", "kind": "transform", "config": {"output": "{{ event.data.order }}"}},
            log_step("b", after=("a",), message="fixed in v2"),
        ),
    )

    plan = replays.plan_replay(run=original, version="latest")
    replay = drive(replays.replay_run(run_id=original.pk, actor="alice", version="latest"))

    assert [(s.step_id, s.action, s.why) for s in plan.steps] == [
        ("a", "reuse", "succeeded in the original"),
        ("b", "run", "changed in v2"),
    ]
    assert "the replay runs v2 of evolving; the original ran v1" in plan.warnings
    assert replay.version_id == v2.pk and replay.status == "succeeded"
    assert steps_of(replay)["a"].reused_from_id is not None


def test_nodes_that_only_moved_in_the_latest_version_are_no_change_for_a_replay(db):
    first = definition(
        {"id": "a", "kind": "transform", "config": {"output": "{{ event.data.order }}"}},
        {"id": "b", "kind": "fail", "config": {"message": "down"}, "after": ["a"]},
    )
    publish("moved", first)
    original = drive(trigger("moved"))
    assert original.status == "failed"
    moved = json.loads(json.dumps(first))
    moved["triggers"][0]["position"] = {"x": -240, "y": 40}
    for index, step in enumerate(moved["steps"]):
        step["position"] = {"x": 80 + 320 * index, "y": 40}
    publish("moved", moved)

    plan = replays.plan_replay(run=original, version="latest")

    assert [(s.step_id, s.action, s.why) for s in plan.steps] == [
        ("a", "reuse", "succeeded in the original"),
        ("b", "run", "failed in the original"),
    ]


def test_a_step_the_failed_run_never_got_to_runs_in_the_replay(db, recorder):
    recorder.answer(Reply(500, {"error": "down"}))
    publish(
        "fan-out",
        definition(
            log_step("start"),
            http_step("charge", f"{recorder.url}/charge", after=("start",)),
            log_step("notify", after=("start",)),
        ),
    )
    original = drive(trigger("fan-out"))
    # `charge` was executed first and failed the run; `notify` was queued and never ran.
    assert original.status == "failed"
    assert steps_of(original)["notify"].status == "skipped"

    plan = replays.plan_replay(run=original)
    replay = drive(replays.replay_run(run_id=original.pk, actor="alice"))

    assert {s.step_id: s.action for s in plan.steps} == {
        "start": "reuse",
        "charge": "run",
        "notify": "run",
    }
    assert replay.status == "succeeded"
    assert steps_of(replay)["notify"].status == "succeeded"


def test_a_branch_the_original_did_not_take_is_skipped_again(db, recorder):
    recorder.answer(Reply(500, {"error": "down"}))
    body = definition(
        {"id": "check", "kind": "condition", "config": {"expression": "event.data.paid"}},
        http_step("ship", f"{recorder.url}/ship"),
        log_step("remind"),
    )
    body["edges"] = [
        {"from": "check", "to": "ship", "port": "true"},
        {"from": "check", "to": "remind", "port": "false"},
    ]
    publish("branching", body)
    original = drive(trigger("branching", {"paid": True}))
    assert original.status == "failed"

    plan = replays.plan_replay(run=original)
    replay = drive(replays.replay_run(run_id=original.pk, actor="alice"))

    assert {s.step_id: s.action for s in plan.steps} == {
        "check": "reuse",
        "ship": "run",
        "remind": "skip",
    }
    steps = steps_of(replay)
    assert replay.status == "succeeded"
    assert (steps["ship"].status, steps["remind"].status) == ("succeeded", "skipped")


def test_an_event_emitted_again_with_the_same_key_is_deduplicated_unless_keys_are_renewed(db):
    from workflows.events.models import Event

    publish(
        "announcer",
        definition(
            {
                "id": "announce",
                "kind": "emit_event",
                "config": {
                    "type": "com.example.announced",
                    "data": {"order": "{{ event.data.order }}"},
                },
            },
            {"id": "boom", "kind": "fail", "config": {"message": "later"}, "after": ["announce"]},
        ),
    )
    original = drive(trigger("announcer", {"order": 4}))

    kept = drive(replays.replay_run(run_id=original.pk, actor="alice", from_step="start"))
    renewed = drive(
        replays.replay_run(
            run_id=original.pk, actor="alice", from_step="start", renew_idempotency_keys=True
        )
    )

    assert steps_of(kept)["announce"].output["duplicate"] is True
    assert steps_of(renewed)["announce"].output["duplicate"] is False
    assert Event.objects.filter(type="com.example.announced").count() == 2


def test_a_replay_that_keeps_its_keys_still_gets_a_child_run_of_its_own(db):
    from workflows.runs.control import after_run_finished

    publish("child", definition(log_step("inside"), event="com.example.unused"))
    publish(
        "parent",
        definition(
            {
                "id": "call",
                "kind": "sub_workflow",
                "config": {"workflow": "child", "input": {"x": 1}},
            },
            {
                "id": "boom",
                "kind": "fail",
                "config": {"message": "after the child"},
                "after": ["call"],
            },
        ),
    )

    def run_with_child(run: Run) -> Run:
        drive(run)
        child = Run.objects.get(parent_step__run=run)
        drive(child)
        after_run_finished(run_id=child.pk)  # what the run_finished task does
        return drive(run)

    original = run_with_child(trigger("parent"))
    assert original.status == "failed"

    replay = run_with_child(
        replays.replay_run(run_id=original.pk, actor="alice", from_step="start")
    )

    children = list(Run.objects.filter(origin="child").order_by("id"))
    assert [c.parent_step.run_id for c in children] == [original.pk, replay.pk]
    assert steps_of(replay)["call"].status == "succeeded"


# --- the preview and what cannot be replayed --------------------------------------------------


def test_the_preview_shows_what_runs_again_and_warns_about_side_effects(failed_run):
    plan = replays.plan_replay(run=failed_run).as_json()

    assert plan["reused"] == ["first"] and plan["rerun"] == ["second", "done"]
    second = next(s for s in plan["steps"] if s["step"] == "second")
    assert second["side_effects"] is True and second["idempotency_key"] == "reused"
    assert second["original_idempotency_key"] == steps_of(failed_run)["second"].idempotency_key
    assert any(
        "second (http_request) has side effects" in w and "SAME idempotency key" in w
        for w in plan["warnings"]
    )
    assert not any("done" in w for w in plan["warnings"])  # log has no side effects

    renewed = replays.plan_replay(run=failed_run, renew_idempotency_keys=True).as_json()
    assert any("NEW idempotency key" in w for w in renewed["warnings"])
    assert Run.objects.count() == 1  # a preview starts nothing


def test_the_preview_warns_that_reused_steps_keep_outputs_of_the_original_input(failed_run):
    plan = replays.plan_replay(run=failed_run, input={"order": 8})

    assert any("input is edited" in w and "first" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("from_step", "status", "message"),
    [
        ("failed", 409, "did not fail"),
        ("nope", 400, "no step 'nope'"),
    ],
)
def test_a_replay_that_cannot_be_done_says_why(chain, from_step, status, message):
    with pytest.raises(replays.ReplayError) as caught:
        replays.replay_run(run_id=chain.pk, actor="alice", from_step=from_step)

    assert caught.value.status == status and message in str(caught.value)
    assert Run.objects.filter(origin="replay").count() == 0
    assert not AuditEntry.objects.exists()


def test_a_run_still_in_flight_cannot_be_replayed(db):
    publish("slow", definition(log_step("only")))
    run = trigger("slow")  # queued step, not executed

    with pytest.raises(replays.ReplayError, match="still running"):
        replays.plan_replay(run=run)


# --- cancel is audited too --------------------------------------------------------------------


def test_cancelling_a_run_records_who_and_why(db):
    publish("cancellable", definition(log_step("only")))
    run = trigger("cancellable")

    assert cancel_run(run_id=run.pk, reason="wrong customer", by="token:ops")

    entry = AuditEntry.objects.get(action="run.cancel")
    assert (entry.actor, entry.target_id, entry.reason) == (
        "token:ops",
        str(run.pk),
        "wrong customer",
    )


def test_cancelling_over_the_api_and_the_cli_is_audited(db, client):
    publish("cancel-both", definition(log_step("only")))
    over_api, over_cli = trigger("cancel-both"), trigger("cancel-both", {"order": 2})
    api = token_client(client, "operator")

    response = api.post(
        f"/api/v1/runs/{over_api.pk}/cancel",
        {"reason": "duplicate order"},
        content_type="application/json",
    )
    command("runs", "cancel", str(over_cli.pk), "--reason", "test order")

    assert response.status_code == 202
    entries = {e.target_id: e for e in AuditEntry.objects.filter(action="run.cancel")}
    assert (entries[str(over_api.pk)].actor, entries[str(over_api.pk)].reason) == (
        "token:operator-token",
        "duplicate order",
    )
    assert (entries[str(over_cli.pk)].actor, entries[str(over_cli.pk)].reason) == (
        "cli",
        "test order",
    )


# --- comparing --------------------------------------------------------------------------------


def test_a_replay_shows_its_differences_from_the_original_step_by_step(failed_run):
    replay = drive(replays.replay_run(run_id=failed_run.pk, actor="alice"))

    compared = {c.step_id: c for c in replays.compare_runs(replay)}

    assert compared["first"].verdict == "reused"
    assert compared["second"].verdict == "status differs"
    assert (compared["second"].original.status, compared["second"].replay.status) == (
        "failed",
        "succeeded",
    )
    assert compared["done"].verdict == "new"


def test_json_diff_names_each_changed_added_and_removed_path():
    before = {"a": 1, "b": {"c": [1, 2, 3]}, "gone": True, "a/b": 1}
    after = {"a": 2, "b": {"c": [1, 5]}, "new": "x", "a/b": 1}

    changes = [(c.path, c.kind) for c in replays.json_diff(before, after)]

    assert changes == [
        ("/a", "changed"),
        ("/b/c/1", "changed"),
        ("/b/c/2", "removed"),
        ("/gone", "removed"),
        ("/new", "added"),
    ]
    assert replays.json_diff({"x": 1}, {"x": 1}) == []
    assert replays.json_diff(1, 1.0) == [replays.Change("", 1, 1.0, "changed")]


# --- shadow replay ----------------------------------------------------------------------------


def test_a_shadow_replay_answers_side_effects_from_recordings_and_compares_outputs(
    db, recorder, client
):
    recorder.default = Reply(200, {"price": 10})
    body = definition(
        http_step("quote", f"{recorder.url}/quote"),
        {
            "id": "total",
            "kind": "transform",
            "config": {"output": "{{ steps.quote.output.body.price * 2 }}"},
            "after": ["quote"],
        },
    )
    publish("pricing", body)
    originals = [drive(trigger("pricing", {"order": n})) for n in (1, 2)]
    assert all(r.status == "succeeded" for r in originals)
    calls_before = len(recorder.requests)
    draft = json.loads(json.dumps(body))
    draft["steps"][1]["config"]["output"] = "{{ steps.quote.output.body.price * 3 }}"
    put_workflow(slug="pricing", raw=draft)

    batch = replays.start_shadow(workflow_slug="pricing", last=5, actor="alice")
    replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)
    shadows = list(Run.objects.filter(origin="shadow").order_by("id"))
    for shadow in shadows:
        drive(shadow)

    assert len(recorder.requests) == calls_before  # nothing was called again
    assert [s.replay_of_id for s in shadows] == [r.pk for r in originals]
    assert all(s.version.kind == "snapshot" and s.version.number is None for s in shadows)
    assert all(s.status == "succeeded" for s in Run.objects.filter(origin="shadow"))
    summary = {s.step_id: s for s in replays.shadow_summary(ReplayBatch.objects.get())}
    assert (summary["quote"].same, summary["quote"].differ) == (2, 0)
    assert (summary["total"].same, summary["total"].differ) == (0, 2)
    change = summary["total"].examples[0]["comparison"]["changes"][0]
    assert (change["before"], change["after"]) == (20, 30)
    assert not DeadLetter.objects.exists()
    page = signed_in(client, "viewer").get(f"/replays/{batch.pk}/").content.decode()
    assert 'id="shadow-step-total" data-differ="2"' in page
    assert 'id="shadow-step-quote" data-differ="0"' in page


def test_a_shadow_step_with_side_effects_and_no_recording_fails_clearly(db, recorder):
    publish("growing", definition(log_step("only")))
    drive(trigger("growing"))
    put_workflow(
        slug="growing",
        raw=definition(
            log_step("only"), http_step("new-call", f"{recorder.url}/new", after=("only",))
        ),
    )

    batch = replays.start_shadow(workflow_slug="growing", last=1, actor="alice")
    replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)
    shadow = drive(Run.objects.get(origin="shadow"))

    assert shadow.status == "failed"
    assert "recorded no result" in steps_of(shadow)["new-call"].error
    assert recorder.requests == []
    assert not DeadLetter.objects.exists()  # a shadow's failure is a finding, not a letter


# --- bulk replay ------------------------------------------------------------------------------


def test_a_bulk_replay_replays_every_selected_run_at_the_rate_asked(db):
    publish("flaky", definition({"id": "boom", "kind": "fail", "config": {"message": "v1 bug"}}))
    failed = [drive(trigger("flaky", {"order": n})) for n in range(3)]
    publish("flaky", definition(log_step("boom", message="fixed")))
    sleeps: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    from workflows.recovery.selectors import FailedRunFilter, failed_runs

    selected = list(
        failed_runs(FailedRunFilter(workflow="flaky", error="v1 bug")).values_list("pk", flat=True)
    )
    batch = replays.start_bulk_replay(
        actor="alice",
        run_ids=selected,
        selection={"workflow": "flaky"},
        version="latest",
        per_second=4,
        reason="v2 fixes it",
    )
    batch = replays.process_batch(batch_id=batch.pk, sleep=sleep, clock=lambda: now[0])

    assert selected == [r.pk for r in failed]
    assert sleeps == [0.25, 0.25]
    assert (batch.status, batch.done, batch.failed, batch.summary["started"]) == ("done", 3, 0, 3)
    replayed = [Run.objects.get(pk=i["replay"]) for i in batch.summary["items"]]
    assert [r.replay_of_id for r in replayed] == [r.pk for r in failed]
    assert all(drive(r).status == "succeeded" for r in replayed)
    assert AuditEntry.objects.filter(action="replay.bulk").count() == 1
    assert AuditEntry.objects.filter(action="run.replay").count() == 3
    # Replayed runs are not selected again.
    assert not failed_runs(FailedRunFilter(workflow="flaky")).exists()


def test_a_bulk_replay_counts_runs_it_could_not_replay_and_goes_on(db):
    publish("mixed", definition({"id": "boom", "kind": "fail", "config": {"message": "bug"}}))
    failed = drive(trigger("mixed"))
    publish("other", definition(log_step("fine")))
    succeeded = drive(trigger("other"))

    batch = replays.start_bulk_replay(
        actor="alice", run_ids=[succeeded.pk, failed.pk], selection={}
    )
    batch = replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)

    assert (batch.done, batch.failed) == (1, 1)
    assert "did not fail" in batch.summary["errors"][0]["error"]
    assert batch.summary["items"][1]["replay"] == Run.objects.get(origin="replay").pk


def test_processing_a_finished_batch_again_does_nothing(db):
    publish("once", definition({"id": "boom", "kind": "fail", "config": {"message": "bug"}}))
    failed = drive(trigger("once"))
    batch = replays.start_bulk_replay(actor="alice", run_ids=[failed.pk], selection={})
    replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)

    replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)

    assert Run.objects.filter(origin="replay").count() == 1


# --- the command line -------------------------------------------------------------------------


def command(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_the_replay_command_replays_from_the_failed_step(failed_run):
    out = command("replay", str(failed_run.pk), "--reason", "fixed upstream")

    replay = Run.objects.get(origin="replay")
    assert f"run {replay.pk}" in out and "reused: first" in out
    assert AuditEntry.objects.get(action="run.replay").actor == "cli"


def test_the_replay_command_takes_a_step_the_latest_version_and_edited_input(chain):
    command("replay", str(chain.pk), "--from-step", "b", "--latest", "--input", '{"order": 9}')

    replay = Run.objects.get(origin="replay")
    assert (replay.replay_from_step, replay.input_override) == ("b", {"order": 9})


def test_the_replay_command_previews_without_starting_anything(failed_run):
    out = command("replay", str(failed_run.pk), "--preview")

    assert "reuse" in out and "SAME idempotency key" in out
    assert not Run.objects.filter(origin="replay").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["999999"], "no run 999999"),
        (["{run}", "--input", "[not json"], "--input is not JSON"),
        (["{run}", "--from-step", "nope"], "no step 'nope'"),
    ],
)
def test_the_replay_command_reports_errors_and_exits_non_zero(chain, args, message):
    with pytest.raises(CommandError, match=message):
        command("replay", *[a.replace("{run}", str(chain.pk)) for a in args])


# --- the API, in process ----------------------------------------------------------------------


def token_client(client, role: str):
    _token, plaintext = create_api_token(name=f"{role}-token", role=role)
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plaintext}"
    return client


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_replaying_over_the_api_needs_the_operator_role(failed_run, client, role):
    api = token_client(client, role)

    response = api.post(f"/api/v1/runs/{failed_run.pk}/replay", {}, content_type="application/json")

    assert response.status_code == 403
    assert response["Content-Type"].startswith("application/problem+json")
    assert not Run.objects.filter(origin="replay").exists()


def test_an_operator_replays_over_the_api_and_a_viewer_may_preview(failed_run, client):
    viewer = token_client(client, "viewer")
    preview = viewer.get(
        f"/api/v1/runs/{failed_run.pk}/replay-preview", {"renew_idempotency_keys": "true"}
    )
    assert preview.status_code == 200
    assert preview.json()["rerun"] == ["second", "done"]
    assert any("NEW idempotency key" in w for w in preview.json()["warnings"])

    operator = token_client(client, "operator")
    response = operator.post(
        f"/api/v1/runs/{failed_run.pk}/replay",
        {"from_step": "second", "version": "original", "reason": "retry"},
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["replay_of"] == failed_run.pk and response["Location"] == body["url"]
    assert AuditEntry.objects.get(action="run.replay").actor == "token:operator-token"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"from_step": "nope"}, 400),
        ({"version": "sideways"}, 400),
        ({"surprise": 1}, 400),
        ({"from_step": "start", "version": "latest"}, 201),
    ],
)
def test_the_replay_endpoint_answers_problems_for_bad_requests(failed_run, client, body, status):
    api = token_client(client, "operator")

    response = api.post(
        f"/api/v1/runs/{failed_run.pk}/replay", body, content_type="application/json"
    )

    assert response.status_code == status, response.content


def test_replaying_an_unknown_run_is_a_404_problem(db, client):
    api = token_client(client, "operator")

    response = api.post("/api/v1/runs/424242/replay", {}, content_type="application/json")

    assert response.status_code == 404
    assert response.json()["type"].endswith("/not-found")


def test_the_compare_endpoint_shows_a_replay_beside_its_original(failed_run, client):
    replay = drive(replays.replay_run(run_id=failed_run.pk, actor="alice"))
    api = token_client(client, "viewer")

    body = api.get(f"/api/v1/runs/{replay.pk}/compare").json()

    assert body["original"] == failed_run.pk
    assert [(s["step"], s["verdict"]) for s in body["steps"]] == [
        ("first", "reused"),
        ("second", "status differs"),
        ("done", "new"),
    ]
    assert api.get(f"/api/v1/runs/{failed_run.pk}/compare").status_code == 409


def test_the_audit_endpoint_lists_entries_newest_first_with_filters(failed_run, client):
    replays.replay_run(run_id=failed_run.pk, actor="alice", reason="first try")
    api = token_client(client, "viewer")

    body = api.get("/api/v1/audit", {"action": "run.replay"}).json()

    assert [(e["actor"], e["reason"]) for e in body["entries"]] == [("alice", "first try")]
    assert api.get("/api/v1/audit", {"action": "run.cancel"}).json()["entries"] == []


# --- end to end through the real processes ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_replaying_a_failed_run_over_the_api_end_to_end(api, recorder):
    from tests.test_spine import finished_run, send
    from tests.test_spine import publish as publish_over_api

    recorder.answer(Reply(200, {"first": "ok"}), Reply(500, {"error": "down"}))
    publish_over_api(api, "e2e-replay", two_calls(recorder))
    failed = finished_run(api, "e2e-replay", send(api, cloudevent(data={"order": 3})))
    assert failed["status"] == "failed"
    letters = api.get("/api/v1/dead-letters").json()["dead_letters"]
    assert [(x["run"], x["step"]) for x in letters if x["run"] == failed["id"]] == [
        (failed["id"], "second")
    ]

    response = api.post(f"/api/v1/runs/{failed['id']}/replay", json={"reason": "back up"})
    assert response.status_code == 201, response.text

    def replay_finished():
        run = api.get(response.headers["Location"]).json()
        return run if run["status"] in ("succeeded", "failed") else None

    replay = wait_until(replay_finished, timeout=60, message="the replay to finish")
    assert replay["status"] == "succeeded", replay
    assert len(calls_to(recorder, "/first")) == 1
    keys = [r.headers["Idempotency-Key"] for r in calls_to(recorder, "/second")]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert api.get(f"/api/v1/dead-letters/{letters[0]['id']}").json()["resolved"] is True


@pytest.mark.django_db(transaction=True)
def test_a_bulk_replay_over_the_api_finishes_with_a_summary(api):
    from tests.test_spine import finished_run, send
    from tests.test_spine import publish as publish_over_api

    publish_over_api(
        api,
        "e2e-bulk",
        definition({"id": "boom", "kind": "fail", "config": {"message": "bulk bug"}}),
    )
    for n in range(3):
        assert finished_run(api, "e2e-bulk", send(api, cloudevent(data={"n": n})))["status"] == (
            "failed"
        )
    publish_over_api(api, "e2e-bulk", definition(log_step("boom", message="fixed")))

    dry = api.post("/api/v1/replays", json={"filter": {"workflow": "e2e-bulk"}, "dry_run": True})
    assert dry.status_code == 200 and dry.json()["matched"] == 3
    started = api.post(
        "/api/v1/replays",
        json={
            "filter": {"workflow": "e2e-bulk", "error": "BULK BUG"},
            "version": "latest",
            "per_second": 10,
            "reason": "v2 fixes it",
        },
    )
    assert started.status_code == 202, started.text

    def finished():
        batch = api.get(started.headers["Location"]).json()
        done = batch["status"] == "done" and batch["outcomes"]["succeeded"] == 3
        return batch if done else None

    batch = wait_until(finished, timeout=60, message="the bulk replay to finish")
    assert (batch["done"], batch["failed"], batch["summary"]["started"]) == (3, 0, 3)


# --- the dashboard ----------------------------------------------------------------------------


def signed_in(client, role: str | None):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from workflows.access.roles import ensure_groups

    ensure_groups()
    user = get_user_model().objects.create_user(
        username=f"{role or 'nobody'}-user", password="not-used"
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return client


def test_an_operator_gets_the_replay_button_on_a_failed_run_and_a_viewer_does_not(
    failed_run, client
):
    page = signed_in(client, "operator").get(f"/runs/{failed_run.pk}/recovery/")

    assert page.status_code == 200
    assert b"Replay from failed step" in page.content
    assert b"dead letter" in page.content and b"open" in page.content
    client.logout()
    viewer = signed_in(client, "viewer").get(f"/runs/{failed_run.pk}/recovery/")
    assert viewer.status_code == 200 and b"Replay from failed step" not in viewer.content


def test_the_run_page_loads_the_recovery_panel(failed_run, client):
    page = signed_in(client, "viewer").get(f"/runs/{failed_run.pk}/")

    assert f'hx-get="/runs/{failed_run.pk}/recovery/"'.encode() in page.content


def test_the_replay_page_previews_and_confirming_starts_the_replay(failed_run, client):
    operator = signed_in(client, "operator")

    preview = operator.get(f"/runs/{failed_run.pk}/replay/", {"from_step": "failed"})
    partial = operator.get(
        f"/runs/{failed_run.pk}/replay/",
        {"from_step": "failed", "renew_idempotency_keys": "on"},
        HTTP_HX_REQUEST="true",
    )
    confirmed = operator.post(
        f"/runs/{failed_run.pk}/replay/",
        {"from_step": "failed", "version": "original", "reason": "the API is back"},
    )

    assert preview.status_code == 200
    text = preview.content.decode()
    assert 'id="plan-first" data-action="reuse"' in text
    assert 'id="plan-second" data-action="run"' in text
    assert "SAME idempotency key" in text
    assert partial.content.decode().startswith('<div id="replay-preview">')
    assert "NEW idempotency key" in partial.content.decode()
    replay = Run.objects.get(origin="replay")
    assert confirmed.status_code == 302 and confirmed["Location"] == f"/runs/{replay.pk}/"
    entry = AuditEntry.objects.get(action="run.replay")
    assert (entry.actor, entry.reason) == ("operator-user", "the API is back")


def test_the_replay_page_shows_why_a_replay_cannot_be_done(chain, client):
    operator = signed_in(client, "operator")

    bad_input = operator.post(
        f"/runs/{chain.pk}/replay/", {"from_step": "start", "input": "{broken"}
    )
    wrong_step = operator.get(f"/runs/{chain.pk}/replay/", {"from_step": "zzz"})

    assert bad_input.status_code == 400 and b"the edited input is not JSON" in bad_input.content
    assert b"no step &#x27;zzz&#x27;" in wrong_step.content
    assert not Run.objects.filter(origin="replay").exists()


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_replaying_and_cancelling_in_the_dashboard_need_the_operator_role(failed_run, client, role):
    page = signed_in(client, role)

    answers = [
        page.get(f"/runs/{failed_run.pk}/replay/"),
        page.post(f"/runs/{failed_run.pk}/replay/", {"from_step": "failed"}),
        page.post(f"/runs/{failed_run.pk}/cancel/", {"reason": "no"}),
        page.post("/replays/", {"workflow": "two-calls"}),
        page.post("/replays/shadow/", {"workflow": "two-calls", "last": "1"}),
    ]

    assert [a.status_code for a in answers] == [403] * 5
    assert not Run.objects.filter(origin="replay").exists()
    assert not ReplayBatch.objects.exists() and not AuditEntry.objects.exists()


def test_cancelling_in_the_dashboard_is_audited(db, client):
    publish("long", definition(log_step("only")))
    run = trigger("long")

    response = signed_in(client, "operator").post(
        f"/runs/{run.pk}/cancel/", {"reason": "sent by mistake"}
    )

    run.refresh_from_db()
    assert response.status_code == 302 and run.status == "cancelled"
    entry = AuditEntry.objects.get(action="run.cancel")
    assert (entry.actor, entry.reason) == ("operator-user", "sent by mistake")


def test_a_replay_page_shows_its_differences_from_the_original(failed_run, client):
    replay = drive(replays.replay_run(run_id=failed_run.pk, actor="alice"))

    panel = signed_in(client, "viewer").get(f"/runs/{replay.pk}/recovery/").content.decode()

    assert f"Differences from run #{failed_run.pk}" in panel
    assert 'id="compare-first" data-verdict="reused"' in panel
    assert 'id="compare-second" data-verdict="status differs"' in panel
    assert "Idempotency keys reused from run" in panel
    assert "run.replay" in panel  # the audit entry of its making


def test_the_bulk_replay_page_lists_matching_runs_and_starts_a_batch(failed_run, client):
    operator = signed_in(client, "operator")

    listed = operator.get("/replays/", {"workflow": "two-calls", "error": "answered 500"})
    started = operator.post(
        "/replays/",
        {
            "workflow": "two-calls",
            "per_second": "2",
            "replay_version": "original",
            "reason": "bulk",
        },
    )

    assert b"<strong>1</strong> failed run(s) match" in listed.content
    batch = ReplayBatch.objects.get()
    assert started.status_code == 302 and started["Location"] == f"/replays/{batch.pk}/"
    assert batch.selection["run_ids"] == [failed_run.pk]
    assert batch.options["per_second"] == 2.0
    page = operator.get(f"/replays/{batch.pk}/").content.decode()
    assert f'data-live-socket="/ws/replays/{batch.pk}/"' in page
    assert 'id="batch-progress"' in page and 'data-status="pending"' in page


def test_the_audit_page_lists_what_was_done(failed_run, client):
    replays.replay_run(run_id=failed_run.pk, actor="alice", reason="back up")

    page = signed_in(client, "viewer").get("/audit/", {"action": "run.replay"})

    assert page.status_code == 200
    assert b"alice" in page.content and b"back up" in page.content


# --- live progress over the WebSocket --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_bulk_replay_progress_is_pushed_to_the_batch_page(client):
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.db import connections

    from orchestrator.asgi import application

    def prepare():
        # Failed runs written directly: the session's stack (if another test started it)
        # consumes the bus and runs steps, and must not race this test for them.
        version = publish(
            "pushed", definition({"id": "boom", "kind": "fail", "config": {"message": "x"}})
        )
        failed = []
        for _ in range(2):
            run = Run.objects.create(workflow=version.workflow, version=version, status="failed")
            StepRun.objects.create(run=run, step_id="boom", kind="fail", status="failed")
            failed.append(run)
        # Not start_bulk_replay: its task would go to that stack's worker; this test works
        # through the batch itself, after the page is connected.
        batch = ReplayBatch.objects.create(
            kind="replay",
            selection={"run_ids": [r.pk for r in failed]},
            options={"per_second": 50},
            total=2,
            created_by="alice",
            summary={"items": []},
        )
        signed_in(client, "viewer")
        return batch, client.cookies["sessionid"].value

    try:
        batch, session = await sync_to_async(prepare)()
        ws = WebsocketCommunicator(
            application,
            f"/ws/replays/{batch.pk}/",
            headers=[
                (b"cookie", f"sessionid={session}".encode()),
                (b"origin", b"http://127.0.0.1"),
            ],
        )
        connected, _ = await ws.connect(timeout=10)
        assert connected
        snapshot = await ws.receive_from(timeout=10)
        assert 'id="batch-progress"' in snapshot and 'data-status="pending"' in snapshot

        await sync_to_async(replays.process_batch)(batch_id=batch.pk, sleep=lambda _s: None)

        frames = []
        while 'data-status="done"' not in (frames[-1] if frames else ""):
            frames.append(await ws.receive_from(timeout=10))
        assert 'data-done="2"' in frames[-1] and 'id="batch-summary"' in frames[-1]
        assert "2 replay(s) started" in frames[-1]
        await ws.disconnect()
    finally:
        await sync_to_async(connections.close_all)()
