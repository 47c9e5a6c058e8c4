"""Bulk replays: every selected run replayed at the rate asked, runs that cannot be replayed
counted, a finished batch left alone, and the batch page's progress pushed live.
"""

from __future__ import annotations

import pytest

from tests.factories import definition, log_step
from tests.runs_here import (
    batch_socket,
    drive,
    frames_until_done,
    publish,
    signed_in,
    trigger,
)
from workflows.access.models import AuditEntry
from workflows.recovery import replay as replays
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run, StepRun

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


# --- live progress over the WebSocket --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_bulk_replay_progress_is_pushed_to_the_batch_page(client):
    from asgiref.sync import sync_to_async
    from django.db import connections

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
        ws = await batch_socket(batch.pk, session)
        snapshot = await ws.receive_from(timeout=10)
        assert 'id="batch-progress"' in snapshot and 'data-status="pending"' in snapshot

        await sync_to_async(replays.process_batch)(batch_id=batch.pk, sleep=lambda _s: None)

        frames = await frames_until_done(ws)
        assert 'data-done="2"' in frames[-1] and 'id="batch-summary"' in frames[-1]
        assert "2 replay(s) started" in frames[-1]
        await ws.disconnect()
    finally:
        await sync_to_async(connections.close_all)()
