"""The run page is where a run started from a page is watched: a try from the editor, a
replay from a run's page and a re-drive of a dead letter each open the new run's page at
once, while its first step is still held mid-flight by a loopback gate, and that page
follows the run step by step over its WebSocket until it succeeds, without a reload."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS, Gate, log_in, marker_survived, set_marker
from tests.browser.test_live_dashboard import publish, run_of_event, send
from tests.factories import cloudevent, definition, http_step, log_step
from tests.waiting import wait_until

RUN_PAGE = re.compile(r"/runs/(\d+)/$")


@pytest.fixture
def held():
    """A gate that holds each call until released, then answers 200."""
    server = Gate(status=200)
    yield server
    server.close()


def gated(url: str) -> dict:
    """A call held by the gate, then a step after it: two steps to watch go by."""
    return definition(
        http_step("call", f"{url}/call", retry={"max_attempts": 1}),
        log_step("done", after=("call",), message="after the call"),
    )


def run_id_of(page: Page) -> int:
    match = RUN_PAGE.search(page.url)
    assert match, f"not a run page: {page.url}"
    return int(match.group(1))


def watch_the_run_finish(page: Page, gate: Gate) -> None:
    """On the new run's page, opened while the gate still holds its first step: the page
    shows the run running at that step, then, once released, each step and the run
    succeeding, all pushed to the same document."""
    assert not gate.released.is_set()
    set_marker(page)
    assert wait_until(lambda: gate.arrived.is_set(), timeout=60, message="the held call")
    expect(page.locator("#live-indicator")).to_have_attribute(
        "data-state", "open", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#run-detail")).to_have_attribute(
        "data-status", "running", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#step-call")).to_have_attribute(
        "data-status", "running", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#step-done")).to_have_count(0)

    gate.release()
    expect(page.locator("#step-call")).to_have_attribute(
        "data-status", "succeeded", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#step-done")).to_have_attribute(
        "data-status", "succeeded", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#run-detail")).to_have_attribute(
        "data-status", "succeeded", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#run-status")).to_have_text("succeeded")
    assert marker_survived(page), "the run page was reloaded"


def failed_run(api, gate: Gate, slug: str) -> dict:
    """A published workflow whose call failed (the gate answered 500), then held again."""
    gate.hold(status=500)
    gate.release()
    publish(api, slug, gated(gate.url))
    run = run_of_event(api, slug, send(api, cloudevent(data={"order": 5})))

    def finished():
        now = api.get(f"/api/v1/runs/{run['id']}").json()
        return now if now["status"] in ("succeeded", "failed") else None

    assert wait_until(finished, timeout=60, message="the run to fail")["status"] == "failed"
    gate.hold(status=200)  # the server is fixed, and the next call is held
    return run


@pytest.mark.browser
def test_a_try_from_the_editor_opens_the_run_page_at_once_and_it_follows_the_run(
    page: Page, api, make_user, held
):
    slug = "live-try"
    put = api.put(f"/api/v1/workflows/{slug}", json=gated(held.url))
    assert put.status_code in (200, 201), put.text
    log_in(page, make_user("editor").username)
    page.goto(f"/workflows/{slug}/edit/")
    expect(page.locator("#editor-live")).to_have_attribute(
        "data-state", "open", timeout=LIVE_TIMEOUT_MS
    )
    page.locator('[data-panel="try"]').click()
    page.locator("#try-data").fill('{"order": 9}')
    page.get_by_role("button", name="Run the draft").click()

    expect(page).to_have_url(RUN_PAGE, timeout=LIVE_TIMEOUT_MS)
    run_id = run_id_of(page)
    expect(page.locator("#run-links")).to_contain_text("try")
    expect(page.locator("#run-editor-link")).to_have_attribute("href", f"/workflows/{slug}/edit/")
    watch_the_run_finish(page, held)
    assert api.get(f"/api/v1/runs/{run_id}").json()["status"] == "succeeded"


@pytest.mark.browser
def test_a_replay_confirmed_on_the_run_page_opens_the_new_run_page_and_it_follows_the_run(
    page: Page, api, make_user, held
):
    failed = failed_run(api, held, "live-replay")
    log_in(page, make_user("operator").username)
    page.goto(f"/runs/{failed['id']}/")
    page.get_by_role("button", name="Replay from failed step").click()
    expect(page).to_have_url(re.compile(rf"/runs/{failed['id']}/replay/\?from_step=failed$"))
    page.get_by_role("button", name="Confirm replay").click()

    expect(page).to_have_url(RUN_PAGE, timeout=LIVE_TIMEOUT_MS)
    replay_id = run_id_of(page)
    assert replay_id != failed["id"]
    watch_the_run_finish(page, held)
    assert api.get(f"/api/v1/runs/{replay_id}").json()["replay_of"] == failed["id"]


@pytest.mark.browser
def test_a_redriven_dead_letter_opens_the_new_run_page_and_it_follows_the_run(
    page: Page, api, make_user, held
):
    failed = failed_run(api, held, "live-redrive")
    letters = api.get("/api/v1/dead-letters").json()["dead_letters"]
    [letter] = [x for x in letters if x["run"] == failed["id"]]
    log_in(page, make_user("operator").username)
    page.goto(f"/dead-letters/{letter['id']}/")
    page.locator("#redrive").click()

    expect(page).to_have_url(RUN_PAGE, timeout=LIVE_TIMEOUT_MS)
    redriven = run_id_of(page)
    assert redriven != failed["id"]
    watch_the_run_finish(page, held)
    assert api.get(f"/api/v1/dead-letters/{letter['id']}").json()["resolved"] is True
