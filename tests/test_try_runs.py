"""Tries of a draft (the editor's "Try it") are marked as tries wherever a run shows, are left
out of run lists unless asked for, and are never picked up by a bulk replay."""

from __future__ import annotations

import pytest

from tests.factories import definition
from tests.runs_here import drive, in_this_process, publish, signed_in, token_client, trigger
from workflows.authoring import drafts
from workflows.queries import runs as selectors
from workflows.recovery import selectors as recovery
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

BROKEN = {"id": "broken", "kind": "fail", "config": {"message": "boom"}}


@pytest.fixture
def failed_try_and_run():
    """A published workflow with one failed run, and a failed try of its draft."""
    publish("tried", definition(BROKEN))
    run = drive(trigger("tried"))
    workflow = run.workflow
    with in_this_process():
        tried = drafts.try_draft(workflow=workflow, by="eddie", data={"order": 1})
    tried = drive(tried)
    assert (run.status, tried.status, tried.origin) == ("failed", "failed", "try")
    return run, tried


def test_run_lists_leave_tries_out_unless_asked(failed_try_and_run, client):
    run, tried = failed_try_and_run
    viewer = signed_in(client, "viewer")

    listed = viewer.get("/runs/").content.decode()
    with_tries = viewer.get("/runs/", {"tries": "1"}).content.decode()

    assert f'id="run-{run.pk}"' in listed and f'id="run-{tried.pk}"' not in listed
    assert f'id="run-{tried.pk}"' in with_tries
    assert 'class="badge-try"' in with_tries and "vNone" not in with_tries
    assert [r.pk for r in selectors.runs()] == [run.pk]
    assert [r.pk for r in selectors.runs(origin="try")] == [tried.pk]


def test_a_try_is_marked_as_a_try_on_its_page_not_vnone(failed_try_and_run, client):
    _run, tried = failed_try_and_run

    page = signed_in(client, "viewer").get(f"/runs/{tried.pk}/").content.decode()

    assert "vNone" not in page
    assert 'class="badge-try"' in page


def test_the_api_lists_tries_only_when_asked_for(failed_try_and_run, client):
    run, tried = failed_try_and_run
    api = token_client(client, "viewer")

    default = [r["id"] for r in api.get("/api/v1/runs").json()["runs"]]
    tries = [r["id"] for r in api.get("/api/v1/runs", {"origin": "try"}).json()["runs"]]

    assert default == [run.pk] and tries == [tried.pk]


def test_bulk_replay_never_selects_a_try(failed_try_and_run, client):
    run, tried = failed_try_and_run

    selected = list(recovery.failed_runs(recovery.FailedRunFilter()))
    page = signed_in(client, "operator").get("/replays/").content.decode()

    assert [r.pk for r in selected] == [run.pk]
    assert f"#{tried.pk}<" not in page and f"#{run.pk}<" in page
    assert Run.objects.filter(origin="try").count() == 1
