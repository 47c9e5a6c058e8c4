"""Recovery the way people do it: a run fails, the workflow is fixed by removing the failing
step, and an operator replays the run from its page onto the fixed version, which it offers
first; the preview says step by step what is reused, what runs and what is gone."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS, log_in, marker_survived, set_marker
from tests.browser.test_live_dashboard import publish, run_of_event, send
from tests.factories import cloudevent, definition, log_step
from tests.waiting import wait_until


def screenshot(page: Page, name: str) -> None:
    """Save the page for the docs when SIGNALBOX_SCREENSHOTS names a folder (never in a
    normal run): `SIGNALBOX_SCREENSHOTS=docs/screenshots` regenerates docs/replay.md's."""
    folder = os.environ.get("SIGNALBOX_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


PREPARE = {"id": "prepare", "kind": "transform", "config": {"output": "{{ event.data.order }}"}}
BROKEN = {"id": "broken", "kind": "fail", "config": {"message": "bug"}, "after": ["prepare"]}


@pytest.mark.browser
def test_a_run_failed_by_a_step_the_fix_removed_is_replayed_onto_the_fix(
    page: Page, api, make_user
):
    slug = "browser-fix"
    publish(api, slug, definition(PREPARE, BROKEN, log_step("notify", after=("broken",))))
    failed = run_of_event(api, slug, send(api, cloudevent(data={"order": 4})))
    wait_until(
        lambda: api.get(f"/api/v1/runs/{failed['id']}").json()["status"] == "failed",
        timeout=60,
        message="the run to fail",
    )
    # The fix: the failing step is removed; notify now follows prepare.
    publish(api, slug, definition(PREPARE, log_step("notify", after=("prepare",))))

    log_in(page, make_user("operator").username)
    page.goto(f"/runs/{failed['id']}/")
    page.get_by_role("button", name="Replay from failed step").click()

    expect(page).to_have_url(re.compile(rf"/runs/{failed['id']}/replay/"))
    latest = page.get_by_role("radio", name=re.compile("latest published: v2"))
    expect(latest).to_be_checked()  # the fix is offered first and chosen
    expect(page.locator("#plan-prepare")).to_have_attribute("data-action", "reuse")
    expect(page.locator("#plan-notify")).to_have_attribute("data-action", "run")
    expect(page.locator("#plan-notify")).to_contain_text("broken is no longer there")
    expect(page.locator("#plan-removed-broken")).to_contain_text("not in v2")
    expect(page.locator("#replay-error")).to_have_count(0)

    # The original version is offered beside it; choosing it previews the broken step again.
    page.get_by_role("radio", name=re.compile("original: v1")).check()
    expect(page.locator("#plan-broken")).to_have_attribute("data-action", "run")
    latest.check()
    expect(page.locator("#plan-removed-broken")).to_be_visible()
    screenshot(page, "replay-onto-fix")
    page.get_by_role("button", name="Confirm replay").click()

    expect(page).to_have_url(re.compile(r"/runs/(\d+)/$"))
    replay_id = int(re.search(r"/runs/(\d+)/$", page.url).group(1))
    assert replay_id != failed["id"]
    set_marker(page)
    expect(page.locator("#run-detail")).to_have_attribute(
        "data-status", "succeeded", timeout=LIVE_TIMEOUT_MS
    )
    assert marker_survived(page), "the run page was reloaded"
    replay = api.get(f"/api/v1/runs/{replay_id}").json()
    assert {s["id"]: s["status"] for s in replay["steps"]} == {
        "prepare": "succeeded",
        "notify": "succeeded",
    }


@pytest.mark.browser
def test_a_replay_that_cannot_start_disables_confirm_and_offers_what_can(
    page: Page, api, make_user
):
    slug = "browser-fine"
    publish(api, slug, definition(PREPARE, log_step("notify", after=("prepare",))))
    run = run_of_event(api, slug, send(api, cloudevent(data={"order": 5})))
    wait_until(
        lambda: api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "succeeded",
        timeout=60,
        message="the run to succeed",
    )
    log_in(page, make_user("operator").username)

    page.goto(f"/runs/{run['id']}/replay/?from_step=failed")

    expect(page.locator("#replay-error")).to_contain_text("did not fail")
    expect(page.get_by_role("button", name="Confirm replay")).to_be_disabled()
    page.locator(".replay-alternative").first.click()
    expect(page.get_by_role("button", name="Confirm replay")).to_be_enabled()
    expect(page.locator("#plan-prepare")).to_have_attribute("data-action", "run")


@pytest.mark.browser
def test_re_driving_selected_dead_letters_asks_first_and_shows_each_outcome(
    page: Page, api, make_user
):
    from workflows.models import DeadLetter

    slug = "browser-letters"
    publish(api, slug, definition(PREPARE, BROKEN))
    failed = run_of_event(api, slug, send(api, cloudevent(data={"order": 6})))
    wait_until(
        lambda: api.get(f"/api/v1/runs/{failed['id']}").json()["status"] == "failed",
        timeout=60,
        message="the run to fail",
    )
    step_letter = DeadLetter.objects.get(run_id=failed["id"])
    poison = DeadLetter.objects.create(
        kind="bus", reason="delivered too often", payload={"event_id": "abc"}
    )
    # The fix removes the failing step and notifies instead.
    publish(api, slug, definition(PREPARE, log_step("notify", after=("prepare",))))

    log_in(page, make_user("operator").username)
    page.goto("/dead-letters/")
    page.get_by_label(f"select dead letter {step_letter.pk}").check()
    page.get_by_label(f"select dead letter {poison.pk}").check()
    page.get_by_role("button", name="Re-drive selected").click()

    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Re-drive 1 of 2 selected dead letters?"
    )
    expect(page.locator(f"#redrive-preview-{step_letter.pk}")).to_contain_text(slug)
    expect(page.locator(f"#redrive-preview-{poison.pk}")).to_contain_text("will not be re-driven")
    page.get_by_label("the latest published version").check()
    page.get_by_role("button", name="Preview again").click()
    expect(page.locator(f"#redrive-preview-{step_letter.pk}")).to_contain_text("v2")
    screenshot(page, "redrive-preview")
    page.get_by_role("button", name="Re-drive 1 letter").click()

    expect(page.locator(f"#redrive-result-{step_letter.pk}")).to_have_attribute(
        "data-ok", "true", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator(f"#redrive-result-{poison.pk}")).to_have_attribute("data-ok", "false")
    expect(page.locator(f"#redrive-result-{poison.pk}")).to_contain_text(
        "event_id must be a whole number"
    )
    replay_link = page.locator(f"#redrive-result-{step_letter.pk} a[href^='/runs/']")
    replay_link.click()
    expect(page.locator("#run-detail")).to_have_attribute(
        "data-status", "succeeded", timeout=LIVE_TIMEOUT_MS
    )


@pytest.mark.browser
def test_the_rest_are_bulk_replayed_onto_the_fix_after_a_dry_run(page: Page, api, make_user):
    slug = "browser-bulk-fix"
    publish(api, slug, definition(PREPARE, BROKEN, log_step("notify", after=("broken",))))
    failed = [run_of_event(api, slug, send(api, cloudevent(data={"order": n}))) for n in (1, 2)]
    for run in failed:
        wait_until(
            lambda run=run: api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "failed",
            timeout=60,
            message="the runs to fail",
        )
    publish(api, slug, definition(PREPARE, log_step("notify", after=("prepare",))))

    log_in(page, make_user("operator").username)
    page.goto("/replays/")
    page.get_by_label("Workflow").first.select_option(slug)
    page.get_by_role("button", name="Show matching runs").click()
    expect(page.locator("#matching-count")).to_contain_text("2 failed run(s) match")
    page.get_by_label("the latest published version").check()
    page.get_by_role("button", name="Dry run: which will start?").click()

    expect(page.locator("#bulk-will-start")).to_have_text("2")
    expect(page.locator("#bulk-will-not-start")).to_have_text("0")
    expect(page.locator(f"#bulk-check-{failed[0]['id']}")).to_contain_text(
        "not in this version: broken"
    )
    screenshot(page, "bulk-replay-dry-run")
    page.get_by_role("button", name="Replay 2 run(s)").click()

    expect(page).to_have_url(re.compile(r"/replays/\d+/$"))
    set_marker(page)
    expect(page.locator("#batch-progress")).to_have_attribute(
        "data-status", "done", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#batch-summary")).to_contain_text("2 replay(s) started")
    expect(page.get_by_role("button", name="Stop the batch")).to_have_count(0)
    assert marker_survived(page), "the batch page was reloaded"
