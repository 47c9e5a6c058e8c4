"""The dashboard in a real browser: login, and run status arriving live over a WebSocket."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import (
    LIVE_TIMEOUT_MS,
    log_in,
    marker_survived,
    set_marker,
    submit_login_form,
    wait_for_live,
)
from tests.factories import cloudevent, definition, http_step, log_step
from tests.waiting import wait_until

CE_JSON = {"Content-Type": "application/cloudevents+json"}


def publish(api, slug: str, body: dict) -> None:
    put = api.put(f"/api/v1/workflows/{slug}", json=body)
    assert put.status_code in (200, 201), put.text
    published = api.post(f"/api/v1/workflows/{slug}/publish")
    assert published.status_code == 201, published.text


def send(api, event: dict) -> int:
    response = api.post("/api/v1/events", json=event, headers=CE_JSON)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def run_of_event(api, slug: str, event_id: int) -> dict:
    def found():
        runs = api.get("/api/v1/runs", params={"workflow": slug}).json()["runs"]
        return next((r for r in runs if r["event"] == event_id), None)

    return wait_until(found, timeout=30, message=f"a run of {slug} for event {event_id}")


@pytest.mark.browser
def test_a_run_reaches_succeeded_on_the_open_runs_page_without_reload(viewer_page: Page, api):
    page = viewer_page
    publish(
        api,
        "browser-orders",
        definition(
            log_step("received"),
            log_step("confirmed", after=("received",)),
        ),
    )
    page.goto("/runs/")
    wait_for_live(page)
    set_marker(page)

    event_id = send(api, cloudevent(data={"order": 1}))

    row = page.locator(f'#run-rows tr[data-event="{event_id}"]')
    expect(row).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(row).to_have_attribute("data-status", "succeeded", timeout=LIVE_TIMEOUT_MS)
    expect(row.locator(".status")).to_have_text("succeeded")
    expect(row.locator("td.workflow")).to_have_text("browser-orders")
    assert marker_survived(page), "the runs page was reloaded"


@pytest.mark.browser
def test_the_run_detail_page_shows_a_failing_step_fail_without_reload(viewer_page: Page, api, gate):
    page = viewer_page
    publish(
        api,
        "browser-failing",
        definition(
            http_step("call", f"{gate.url}/hook", config={"timeout_seconds": 60}),
            log_step("never", after=("call",)),
        ),
    )
    event_id = send(api, cloudevent())
    run = run_of_event(api, "browser-failing", event_id)
    assert gate.arrived.wait(30), "the http_request step never reached the gate"

    page.goto(f"/runs/{run['id']}/")
    detail = page.locator("#run-detail")
    expect(detail).to_have_attribute("data-status", "running")
    expect(page.locator("#step-call")).to_have_attribute("data-status", "running")
    wait_for_live(page)
    set_marker(page)

    gate.release()  # the endpoint answers 400: not retryable, so the run fails

    expect(detail).to_have_attribute("data-status", "failed", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#run-status")).to_have_text("failed")
    expect(page.locator("#step-call")).to_have_attribute("data-status", "failed")
    expect(page.locator("#step-call")).to_contain_text("answered 400")
    expect(page.locator("#step-never")).to_have_count(0)
    assert marker_survived(page), "the run detail page was reloaded"


@pytest.mark.browser
def test_the_runs_page_sends_an_anonymous_visitor_to_the_login_form(page: Page, make_user):
    page.goto("/runs/")

    expect(page).to_have_url(re.compile(r"/login/\?next=/runs/$"))
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.locator("#run-rows")).to_have_count(0)

    # Signing in from there leads back to the page that was asked for.
    submit_login_form(page, make_user("viewer").username)
    expect(page).to_have_url(re.compile(r"/runs/$"))
    expect(page.locator("#run-rows")).to_have_count(1)


@pytest.mark.browser
def test_a_signed_in_user_without_a_role_is_refused_the_runs_page(page: Page, make_user):
    log_in(page, make_user(role=None).username, landing_path="/runs/")

    expect(page.get_by_role("heading", name="Forbidden")).to_be_visible()
    expect(page.locator("#run-rows")).to_have_count(0)


@pytest.mark.browser
def test_new_runs_arrive_on_top_of_a_full_runs_page_which_keeps_its_size(viewer_page: Page, api):
    # Frames after the snapshot carry only new and changed rows (dashboard/run_list_frames.py):
    # the page prepends new runs and drops the rows past its page size itself.
    page = viewer_page
    publish(api, "browser-paged", definition(log_step("received"), event="com.example.paged"))
    first = [send(api, cloudevent("com.example.paged", data={"n": n})) for n in range(2)]
    runs = [run_of_event(api, "browser-paged", event_id) for event_id in first]
    second_newest = max(runs, key=lambda run: run["id"])["event"]
    page.goto("/runs/?workflow=browser-paged&limit=2")
    rows = page.locator("#run-rows tr[data-event]")
    expect(rows).to_have_count(2)
    wait_for_live(page)
    set_marker(page)

    newest = send(api, cloudevent("com.example.paged", data={"n": 2}))

    expect(rows.first).to_have_attribute("data-event", str(newest), timeout=LIVE_TIMEOUT_MS)
    expect(rows.first).to_have_attribute("data-status", "succeeded", timeout=LIVE_TIMEOUT_MS)
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_have_attribute("data-event", str(second_newest))
    expect(page.locator("#run-pager a[rel=next]")).to_have_count(1)
    # The older run may still be finishing: its change comes as a frame of its own.
    expect(rows.nth(1)).to_have_attribute("data-status", "succeeded", timeout=LIVE_TIMEOUT_MS)
    assert marker_survived(page), "the runs page was reloaded"
    # What the live frames built is what the page itself renders.
    live = rows.evaluate_all("rows => rows.map(r => r.id + ':' + r.dataset.status)")
    page.reload()
    assert rows.evaluate_all("rows => rows.map(r => r.id + ':' + r.dataset.status)") == live
