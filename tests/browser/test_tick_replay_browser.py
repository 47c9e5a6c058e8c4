"""Ticking failed runs in the live run list and replaying exactly those, with the dry run
first, in a real browser: the ticks survive the list being re-sent by its socket."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import log_in, wait_for_live
from tests.browser.test_live_dashboard import publish, run_of_event, send
from tests.browser.test_replay_onto_fix_browser import screenshot
from tests.factories import cloudevent, definition
from tests.waiting import wait_until

EVENT = "com.example.ticks"
BROKEN = {"id": "broken", "kind": "fail", "config": {"message": "bug"}}


def failed_runs(api, count: int) -> list[int]:
    publish(api, "tick-replay", definition(BROKEN, event=EVENT))
    ids = []
    for n in range(count):
        run = run_of_event(api, "tick-replay", send(api, cloudevent(EVENT, data={"n": n})))
        ids.append(run["id"])

    def all_failed():
        return all(api.get(f"/api/v1/runs/{i}").json()["status"] == "failed" for i in ids)

    wait_until(all_failed, timeout=60, message="the runs to fail")
    return ids


@pytest.mark.browser
def test_an_operator_ticks_two_failed_runs_and_replays_exactly_those(page: Page, api, make_user):
    first, second, third = failed_runs(api, 3)
    log_in(page, make_user("operator").username)
    page.goto("/runs/?workflow=tick-replay")
    wait_for_live(page)
    replay_ticked = page.get_by_role("button", name="Replay ticked runs…")
    expect(replay_ticked).to_be_disabled()

    page.get_by_label(f"tick run {first}").check()
    page.get_by_label(f"tick run {third}").check()
    expect(page.locator("#ticked-count")).to_have_text("2 run(s) ticked")
    screenshot(page, "runs-ticked")
    # A dropped socket comes back with the whole list: the ticks are put back on it.
    page.evaluate("window.SignalboxLive.drop()")
    wait_for_live(page)
    expect(page.get_by_label(f"tick run {first}")).to_be_checked()
    expect(page.get_by_label(f"tick run {second}")).not_to_be_checked()
    replay_ticked.click()

    expect(page).to_have_url(re.compile(r"/replays/\?"))
    expect(page.locator("#ticked-runs")).to_contain_text("2 run(s) ticked in the run list")
    page.get_by_role("button", name="Dry run: which will start?").click()
    expect(page.locator("#bulk-will-start")).to_have_text("2")
    expect(page.locator(f"#bulk-check-{first}")).to_have_attribute("data-will-start", "true")
    expect(page.locator(f"#bulk-check-{second}")).to_have_count(0)
    page.locator("#bulk-replay").get_by_label("Reason").fill("ticked in the list")
    page.get_by_role("button", name="Replay 2 run(s)").click()

    expect(page).to_have_url(re.compile(r"/replays/(\d+)/$"))
    batch_id = int(re.search(r"/replays/(\d+)/$", page.url).group(1))
    batch = api.get(f"/api/v1/replays/{batch_id}").json()
    assert (batch["total"], sorted(batch["selection"]["runs"])) == (2, [first, third])
