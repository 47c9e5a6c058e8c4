"""Bulk replay with the same choices as one replay (from the failed step, the start or a
chosen step; onto the original or the latest version) and a dry run that says, before
anything starts, which runs will start and why the others will not."""

from __future__ import annotations

import pytest

from tests.factories import definition, log_step
from tests.runs_here import command, drive, publish, signed_in, token_client, trigger
from workflows.recovery import replay as replays
from workflows.recovery import selectors as recovery
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

PREPARE = {"id": "prepare", "kind": "transform", "config": {"output": "{{ event.data.order }}"}}
BROKEN = {"id": "broken", "kind": "fail", "config": {"message": "bug"}, "after": ["prepare"]}


@pytest.fixture
def two_failed_then_fixed() -> list[Run]:
    publish("bulkfix", definition(PREPARE, BROKEN, log_step("notify", after=("broken",))))
    failed = [drive(trigger("bulkfix", {"order": n})) for n in (1, 2)]
    assert [r.status for r in failed] == ["failed", "failed"]
    publish("bulkfix", definition(PREPARE, log_step("notify", after=("prepare",))))
    return failed


def selected():
    return recovery.failed_runs(recovery.FailedRunFilter(workflow="bulkfix")).values_list(
        "pk", flat=True
    )


def test_a_dry_run_says_which_runs_will_start_and_why_the_others_will_not(two_failed_then_fixed):
    onto_fix = replays.check_bulk_replay(run_ids=selected(), from_step="failed", version="latest")
    from_gone_step = replays.check_bulk_replay(
        run_ids=selected(), from_step="broken", version="latest"
    )

    assert [c.can for c in onto_fix] == [True, True]
    assert "not in this version: broken" in onto_fix[0].why
    assert [c.can for c in from_gone_step] == [False, False]
    assert "no step 'broken' in v2" in from_gone_step[0].why
    assert not Run.objects.filter(origin="replay").exists()


def test_a_dry_run_plans_runs_that_ended_alike_once_and_still_says_each_ones_own_verdict(
    two_failed_then_fixed,
):
    publish("bulkok", definition(log_step("only")))
    succeeded = [drive(trigger("bulkok", {"order": n})) for n in (1, 2)]
    mixed = [two_failed_then_fixed[0].pk, succeeded[0].pk, two_failed_then_fixed[1].pk]
    mixed.append(succeeded[1].pk)

    checks = replays.check_bulk_replay(run_ids=mixed, from_step="failed", version="original")

    assert [c.run_id for c in checks] == mixed
    assert [c.can for c in checks] == [True, False, True, False]
    for check in checks:  # what planning each run on its own says, word for word
        run = Run.objects.get(pk=check.run_id)
        try:
            plan = replays.plan_replay(run=run, from_step="failed", version="original")
        except replays.ReplayError as exc:
            assert check.why == str(exc)
        else:
            assert check.why == (
                f"v1: {len(plan.reused)} step(s) reused, {len(plan.rerun)} run again"
            )
        assert (check.workflow, check.version, check.error) == (
            run.workflow.slug,
            run.version.number,
            run.error,
        )
    assert f"run {succeeded[1].pk} did not fail" in checks[3].why
    assert (
        checks[1].reason
        == checks[3].reason
        == checks[3].why.replace(f"run {succeeded[1].pk} ", "this run ")
    )


def test_the_bulk_page_dry_runs_then_starts_from_the_chosen_step_onto_the_latest(
    two_failed_then_fixed, client
):
    operator = signed_in(client, "operator")
    choices = {"workflow": "bulkfix", "from_step": "failed", "replay_version": "latest"}

    dry = operator.get("/replays/", {**choices, "dry_run": "1"}).content.decode()
    refused = operator.get(
        "/replays/", {**choices, "from_step": "broken", "dry_run": "1"}
    ).content.decode()
    started = operator.post("/replays/", {**choices, "from_step": "start", "reason": "fixed"})

    assert '<strong id="bulk-will-start">2</strong>' in dry
    assert '<strong id="bulk-will-not-start">0</strong>' in dry
    assert '<strong id="bulk-will-not-start">2</strong>' in refused
    assert "no step &#x27;broken&#x27; in v2" in refused
    # Grouped by reason: one line for both runs, naming them.
    reasons = refused.split('id="bulk-refused"')[1].split("</table>")[0]
    assert reasons.count("<tr>") == 2  # the header and one reason
    assert '<td class="num">2</td>' in reasons
    assert all(f"#{run.pk}" in reasons for run in two_failed_then_fixed)
    batch = ReplayBatch.objects.get()
    assert started.status_code == 302
    assert (batch.options["from_step"], batch.options["version"]) == ("start", "latest")
    assert not Run.objects.filter(origin="replay").exists()  # the dry runs started nothing


def test_the_api_dry_run_counts_what_will_and_will_not_start(two_failed_then_fixed, client):
    api = token_client(client, "operator")

    onto_fix = api.post(
        "/api/v1/replays",
        {"filter": {"workflow": "bulkfix"}, "version": "latest", "dry_run": True},
        content_type="application/json",
    ).json()
    on_original_from_a_gone_step = api.post(
        "/api/v1/replays",
        {"filter": {"workflow": "bulkfix"}, "from_step": "nope", "dry_run": True},
        content_type="application/json",
    ).json()

    assert (onto_fix["will_start"], onto_fix["will_not_start"]) == (2, 0)
    assert onto_fix["runs"][0]["will_start"] is True
    assert on_original_from_a_gone_step["will_not_start"] == 2
    assert "no step 'nope'" in on_original_from_a_gone_step["runs"][0]["why"]


def test_the_cli_dry_run_says_which_runs_would_not_start_and_why(two_failed_then_fixed):
    out = command(
        "replay",
        "--failed",
        "--workflow",
        "bulkfix",
        "--from-step",
        "broken",
        "--latest",
        "--dry-run",
    )

    assert "will not start: no step 'broken' in v2" in out
    assert "0 would start, 2 would not" in out
    assert not Run.objects.filter(origin="replay").exists()
