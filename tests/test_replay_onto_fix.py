"""Replay onto a fix: the usual fix removes or renames the failing step, and a replay of the
failed run onto the new version must map the run onto it (reuse what succeeded unchanged, run
everything after the first changed or missing step) instead of refusing."""

from __future__ import annotations

import pytest

from tests.factories import definition, log_step
from tests.runs_here import drive, publish, signed_in, steps_of, trigger
from workflows.recovery import replay as replays
from workflows.runs.models import Run

PREPARE = {"id": "prepare", "kind": "transform", "config": {"output": "{{ event.data.order }}"}}
BROKEN = {"id": "broken", "kind": "fail", "config": {"message": "bug in v1"}, "after": ["prepare"]}


@pytest.fixture
def fixed_by_removing_the_step(db) -> Run:
    """v1: prepare -> broken -> notify, failed at `broken`; v2 removes `broken`."""
    publish("fixable", definition(PREPARE, BROKEN, log_step("notify", after=("broken",))))
    original = drive(trigger("fixable", {"order": 3}))
    assert original.status == "failed"
    publish("fixable", definition(PREPARE, log_step("notify", after=("prepare",))))
    return Run.objects.select_related("workflow", "version").get(pk=original.pk)


def test_replaying_from_the_failed_step_onto_a_version_without_it_maps_the_run(
    fixed_by_removing_the_step,
):
    original = fixed_by_removing_the_step

    plan = replays.plan_replay(run=original, from_step="failed", version="latest")

    assert [(s.step_id, s.action) for s in plan.steps] == [("prepare", "reuse"), ("notify", "run")]
    notify = plan.steps[1]
    assert notify.why == "its inputs changed in v2: broken is no longer there"
    assert [(r.step_id, r.original_status) for r in plan.removed] == [("broken", "failed")]
    assert any("broken, which failed in the original, is not in v2" in w for w in plan.warnings)
    assert plan.as_json()["removed"] == [
        {"step": "broken", "kind": "fail", "original_status": "failed"}
    ]

    replay = drive(
        replays.replay_run(run_id=original.pk, actor="alice", from_step="failed", version="latest")
    )

    assert replay.status == "succeeded", replay.error
    assert replay.version.number == 2
    assert steps_of(replay)["prepare"].reused_from_id == steps_of(original)["prepare"].pk
    assert steps_of(replay)["notify"].status == "succeeded"
    assert "broken" not in steps_of(replay)


def test_the_latest_version_is_offered_first_when_it_is_newer(fixed_by_removing_the_step):
    original = fixed_by_removing_the_step

    choices = replays.version_choices(original)

    assert [(c["value"], c["number"]) for c in choices] == [("latest", 2), ("original", 1)]
    assert replays.default_version(original) == "latest"


def test_only_the_original_is_offered_when_it_is_the_latest(db):
    publish("steady", definition(PREPARE, BROKEN))
    original = drive(trigger("steady"))

    assert [c["value"] for c in replays.version_choices(original)] == ["original"]


def test_a_replay_that_cannot_start_is_told_what_can(db):
    publish("fine", definition(PREPARE, log_step("after", after=("prepare",))))
    succeeded = drive(trigger("fine"))
    assert succeeded.status == "succeeded"

    with pytest.raises(replays.ReplayError, match="did not fail"):
        replays.plan_replay(run=succeeded, from_step="failed")
    can = replays.replays_that_can_start(succeeded)

    assert [(c["from_step"], c["version"]) for c in can] == [("start", "original")]


def test_both_starts_onto_both_versions_can_start_after_a_fix(fixed_by_removing_the_step):
    can = replays.replays_that_can_start(fixed_by_removing_the_step)

    assert [(c["from_step"], c["version"]) for c in can] == [
        ("failed", "latest"),
        ("start", "latest"),
        ("failed", "original"),
        ("start", "original"),
    ]


def test_the_replay_page_defaults_to_the_fix_and_previews_the_mapping(
    fixed_by_removing_the_step, client
):
    original = fixed_by_removing_the_step
    operator = signed_in(client, "operator")

    page = operator.get(f"/runs/{original.pk}/replay/")

    text = page.content.decode()
    assert page.status_code == 200
    assert 'value="latest" checked' in text  # the fix is the default
    assert text.index('value="latest"') < text.index('value="original"')
    assert 'id="plan-prepare" data-action="reuse"' in text
    assert 'id="plan-notify" data-action="run"' in text
    assert 'id="plan-removed-broken"' in text
    assert 'id="confirm-replay" disabled' not in text

    confirmed = operator.post(
        f"/runs/{original.pk}/replay/", {"from_step": "failed", "version": "latest"}
    )

    replay = Run.objects.get(origin="replay")
    assert confirmed.status_code == 302 and replay.version.number == 2


def test_a_replay_page_that_cannot_start_disables_confirm_and_offers_what_can(db, client):
    publish("fine", definition(PREPARE, log_step("after", after=("prepare",))))
    succeeded = drive(trigger("fine"))
    operator = signed_in(client, "operator")

    page = operator.get(f"/runs/{succeeded.pk}/replay/", {"from_step": "failed"})
    refused = operator.post(f"/runs/{succeeded.pk}/replay/", {"from_step": "failed"})

    text = page.content.decode()
    assert "did not fail" in text
    assert 'id="confirm-replay" disabled' in text
    assert 'class="replay-alternative"' in text and "from_step=start" in text
    assert refused.status_code == 409 and 'id="confirm-replay" disabled' in refused.content.decode()
    assert not Run.objects.filter(origin="replay").exists()


def test_the_run_page_says_a_fix_is_published_since_the_run(fixed_by_removing_the_step, client):
    panel = signed_in(client, "operator").get(f"/runs/{fixed_by_removing_the_step.pk}/recovery/")

    assert "v2 is published since this run ran" in panel.content.decode()


def test_the_api_says_why_a_replay_cannot_start_and_offers_what_can(db, client):
    from tests.runs_here import token_client

    publish("fine", definition(PREPARE, log_step("after", after=("prepare",))))
    succeeded = drive(trigger("fine"))
    api = token_client(client, "operator")

    preview = api.get(f"/api/v1/runs/{succeeded.pk}/replay-preview", {"from_step": "failed"})
    refused = api.post(
        f"/api/v1/runs/{succeeded.pk}/replay",
        {"from_step": "failed"},
        content_type="application/json",
    )

    for answer in (preview, refused):
        assert answer.status_code == 409
        assert answer["Content-Type"] == "application/problem+json"
        assert "did not fail" in answer.json()["detail"]
        assert answer.json()["can_start"] == [
            {"from_step": "start", "version": "original", "version_number": 1}
        ]
    assert not Run.objects.filter(origin="replay").exists()


def test_the_api_preview_lists_the_steps_the_fix_removed(fixed_by_removing_the_step, client):
    from tests.runs_here import token_client

    api = token_client(client, "viewer")

    plan = api.get(
        f"/api/v1/runs/{fixed_by_removing_the_step.pk}/replay-preview", {"version": "latest"}
    ).json()

    assert plan["removed"] == [{"step": "broken", "kind": "fail", "original_status": "failed"}]
    assert plan["reused"] == ["prepare"] and plan["rerun"] == ["notify"]


def test_a_fix_that_removes_the_last_step_replays_to_success_reusing_everything(db):
    publish("tail", definition(PREPARE, BROKEN))
    original = drive(trigger("tail"))
    publish("tail", definition(PREPARE))

    replay = drive(replays.replay_run(run_id=original.pk, actor="alice", version="latest"))

    assert replay.status == "succeeded", replay.error
    assert steps_of(replay)["prepare"].reused_from_id == steps_of(original)["prepare"].pk
