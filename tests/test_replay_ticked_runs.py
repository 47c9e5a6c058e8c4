"""Bulk replay of runs ticked in the run list: exactly those runs, the same choices and
dry run as the filter path; ticked runs a bulk replay does not take are named."""

from __future__ import annotations

import pytest

from tests.factories import definition, log_step
from tests.runs_here import drive, publish, signed_in, trigger
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

PREPARE = {"id": "prepare", "kind": "transform", "config": {"output": "{{ event.data.order }}"}}
BROKEN = {"id": "broken", "kind": "fail", "config": {"message": "bug"}, "after": ["prepare"]}


@pytest.fixture
def three_failed_one_ok() -> tuple[list[Run], Run]:
    publish("ticks", definition(PREPARE, BROKEN))
    failed = [drive(trigger("ticks", {"order": n})) for n in (1, 2, 3)]
    publish("ticks-ok", definition(log_step("fine")))
    ok = drive(trigger("ticks-ok", {"order": 4}))
    assert [r.status for r in failed] == ["failed"] * 3 and ok.status == "succeeded"
    return failed, ok


def test_the_run_list_offers_a_tick_for_failed_runs_only(three_failed_one_ok, client):
    failed, ok = three_failed_one_ok
    html = signed_in(client, "viewer").get("/runs/").content.decode()

    assert 'id="tick-replay"' in html and 'action="/replays/"' in html
    for run in failed:
        assert f'name="run" value="{run.pk}" form="tick-replay"' in html
    assert f'value="{ok.pk}" form="tick-replay"' not in html


def test_a_dry_run_of_ticked_runs_lists_exactly_those_and_names_the_left_out(
    three_failed_one_ok, client
):
    failed, ok = three_failed_one_ok
    operator = signed_in(client, "operator")
    ticked = [failed[0].pk, failed[2].pk, ok.pk]

    html = operator.get("/replays/", {"run": ticked, "dry_run": "1"}).content.decode()

    assert '<strong id="bulk-will-start">2</strong> of 2 will start' in html
    assert f'id="bulk-check-{failed[0].pk}"' in html and f'id="bulk-check-{failed[2].pk}"' in html
    assert f'id="bulk-check-{failed[1].pk}"' not in html
    assert f'href="/runs/{ok.pk}/">#{ok.pk}</a>' in html.split('id="ticked-left-out"')[1]
    # The ticks ride along with the dry run and the replay button.
    for run_id in ticked:
        assert f'<input type="hidden" name="run" value="{run_id}">' in html
    assert not Run.objects.filter(origin="replay").exists()


def test_replaying_ticked_runs_makes_a_batch_of_exactly_those(three_failed_one_ok, client):
    failed, ok = three_failed_one_ok
    operator = signed_in(client, "operator")

    started = operator.post(
        "/replays/", {"run": [failed[1].pk, ok.pk], "from_step": "start", "reason": "ticked"}
    )

    batch = ReplayBatch.objects.get()
    assert started.status_code == 302 and started["Location"] == f"/replays/{batch.pk}/"
    assert batch.selection["runs"] == [failed[1].pk, ok.pk]
    assert batch.total == 1
    assert batch.options["from_step"] == "start"


def test_ticks_that_are_not_run_ids_are_a_form_error(client, db):
    html = signed_in(client, "operator").post("/replays/", {"run": ["7", "x"]})

    assert html.status_code == 400
    assert "runs: must be run ids" in html.content.decode()
    assert not ReplayBatch.objects.exists()
