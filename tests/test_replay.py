"""Replay: from the failed step, from any step, from the start, with edited input, on the
latest version; the preview and what cannot be replayed; comparing a replay with its
original; shadow replays.

Runs are driven in this process (`drive` executes each queued step as a worker would,
tests/runs_here.py), so every outcome is deterministic. Bulk replays are in
test_replay_bulk.py, the command line and the API in test_replay_cli_and_api.py, the
dashboard in test_replay_dashboard.py.
"""

from __future__ import annotations

import json

import pytest

from tests.factories import definition, http_step, log_step
from tests.http_recorder import Reply
from tests.runs_here import (
    calls_to,
    drive,
    publish,
    signed_in,
    steps_of,
    trigger,
)
from workflows.access.models import AuditEntry
from workflows.authoring.definitions import put_workflow
from workflows.events.models import DeadLetter, Event
from workflows.recovery import replay as replays
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run, RunJournal, StepRun
from workflows.runs.projections import differences, rebuild_run

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
