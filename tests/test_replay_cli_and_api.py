"""Replay from the command line and over the API: in process (roles, problems, compare,
audit), and end to end through the real processes.
"""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError

from tests.factories import cloudevent, definition, log_step
from tests.http_recorder import Reply
from tests.runs_here import (
    calls_to,
    command,
    drive,
    token_client,
    two_calls,
)
from tests.waiting import wait_until
from workflows.access.models import AuditEntry
from workflows.recovery import replay as replays
from workflows.runs.models import Run

# --- the command line -------------------------------------------------------------------------


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
