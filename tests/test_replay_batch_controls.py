"""A batch's controls follow its state, live: "Stop the batch" is offered while it runs and
goes away by itself when it finishes (no reload), for operators only."""

from __future__ import annotations

import pytest

from tests.factories import definition
from tests.runs_here import batch_socket, frames_until_done, publish, signed_in
from workflows.recovery import replay as replays
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run, StepRun


def failed_runs_and_batch(status: str = "pending") -> ReplayBatch:
    # Failed runs written directly: the session's stack (if another test started it) must
    # not race this test for their steps.
    version = publish(
        "controlled", definition({"id": "boom", "kind": "fail", "config": {"message": "x"}})
    )
    failed = []
    for _ in range(2):
        run = Run.objects.create(workflow=version.workflow, version=version, status="failed")
        StepRun.objects.create(run=run, step_id="boom", kind="fail", status="failed")
        failed.append(run)
    return ReplayBatch.objects.create(
        kind="replay",
        status=status,
        selection={"run_ids": [r.pk for r in failed]},
        options={"per_second": 50},
        total=2,
        created_by="alice",
        summary={"items": []},
    )


@pytest.mark.django_db
def test_the_stop_control_shows_only_while_the_batch_runs_and_only_to_operators(client):
    running = failed_runs_and_batch("running")
    done = ReplayBatch.objects.create(
        kind="replay",
        status="done",
        selection={"run_ids": []},
        options={},
        total=0,
        created_by="alice",
        summary={"items": []},
    )
    operator = signed_in(client, "operator")

    assert 'id="stop-batch"' in operator.get(f"/replays/{running.pk}/").content.decode()
    assert "Stop the batch" not in operator.get(f"/replays/{done.pk}/").content.decode()
    stopped = operator.post(f"/replays/{running.pk}/cancel/", HTTP_HX_REQUEST="true")
    assert stopped.status_code == 204 and stopped["HX-Redirect"] == f"/replays/{running.pk}/"
    page = operator.get(f"/replays/{running.pk}/").content.decode()
    assert "Stop the batch" not in page and 'id="batch-stopped"' in page
    client.logout()
    viewer = signed_in(client, "viewer").get(f"/replays/{failed_runs_and_batch().pk}/")
    assert "Stop the batch" not in viewer.content.decode()


@pytest.mark.django_db(transaction=True)
async def test_a_finished_batch_stops_offering_stop_without_a_reload(client):
    from asgiref.sync import sync_to_async
    from django.db import connections

    def prepare():
        batch = failed_runs_and_batch()
        signed_in(client, "operator")
        return batch, client.cookies["sessionid"].value

    try:
        batch, session = await sync_to_async(prepare)()
        ws = await batch_socket(batch.pk, session)
        snapshot = await ws.receive_from(timeout=10)
        assert 'data-status="pending"' in snapshot and 'id="stop-batch"' in snapshot

        await sync_to_async(replays.process_batch)(batch_id=batch.pk, sleep=lambda _s: None)

        frames = await frames_until_done(ws)
        assert 'id="batch-summary"' in frames[-1]
        assert 'id="stop-batch"' not in frames[-1]
        await ws.disconnect()
    finally:
        await sync_to_async(connections.close_all)()
