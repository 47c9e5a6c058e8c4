"""Replay in the dashboard: the replay button and recovery panel, the replay page's preview
and confirmation, roles, differences, bulk replay and the audit page.
"""

from __future__ import annotations

import pytest

from tests.runs_here import (
    drive,
    signed_in,
)
from workflows.access.models import AuditEntry
from workflows.recovery import replay as replays
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run

# --- the dashboard ----------------------------------------------------------------------------


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
