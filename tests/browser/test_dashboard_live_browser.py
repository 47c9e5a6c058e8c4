"""The live dashboard in a real browser against the real stack: an event appears in the live
flow (and the run it started joins its row), a run goes from running to failed on the runs
page, and pages whose WebSocket dropped catch up once it reconnects, all without reload."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import (
    LIVE_TIMEOUT_MS,
    log_in,
    marker_survived,
    set_marker,
    wait_for_live,
)
from tests.browser.test_live_dashboard import publish, run_of_event, send
from tests.factories import cloudevent, definition, http_step, log_step
from tests.waiting import wait_until

FLOW_TYPE = "com.example.flow.checked"


def hold_sockets(page: Page) -> None:
    """Drop the page's sockets as a network failure would, and keep them down."""
    page.evaluate("window.SignalboxLive.hold()")
    expect(page.locator("#live-indicator")).to_have_attribute("data-state", "closed")


def release_sockets(page: Page) -> None:
    page.evaluate("window.SignalboxLive.release()")


@pytest.mark.browser
def test_an_event_appears_in_the_live_flow_and_opens_its_lineage(viewer_page: Page, api):
    page = viewer_page
    publish(api, "browser-flow", definition(log_step("seen"), event=FLOW_TYPE))
    page.goto("/flow/")
    wait_for_live(page)
    set_marker(page)

    event_id = send(api, cloudevent(FLOW_TYPE, subject="flow-subject-1", data={"order": 11}))

    row = page.locator(f"#flow-event-{event_id}")
    expect(row).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(row).to_contain_text(FLOW_TYPE)
    expect(row).to_contain_text("flow-subject-1")
    # The run starts after the bus consumer matched the event; the row learns of it live.
    expect(page.locator(f"#flow-runs-{event_id} .run-tag")).to_contain_text(
        "browser-flow", timeout=LIVE_TIMEOUT_MS
    )

    row.click()
    detail = page.locator("#flow-event-detail")
    expect(detail).to_have_attribute("data-event", str(event_id))
    expect(detail.locator(f"#lineage-node-event-{event_id}")).to_have_count(1)
    expect(detail.locator("g.lineage-run")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(detail.locator("g.lineage-run")).to_have_attribute(
        "data-state", "succeeded", timeout=LIVE_TIMEOUT_MS
    )
    assert marker_survived(page), "the flow page was reloaded"


@pytest.mark.browser
def test_a_run_goes_from_running_to_failed_on_the_runs_page_without_reload(
    viewer_page: Page, api, gate
):
    page = viewer_page
    publish(
        api,
        "browser-list-failing",
        definition(
            http_step("call", f"{gate.url}/hook", config={"timeout_seconds": 60}),
            event="com.example.list.failing",
        ),
    )
    page.goto("/runs/?workflow=browser-list-failing")
    wait_for_live(page)
    set_marker(page)

    event_id = send(api, cloudevent("com.example.list.failing"))
    row = page.locator(f'#run-rows tr[data-event="{event_id}"]')
    expect(row).to_have_attribute("data-status", "running", timeout=LIVE_TIMEOUT_MS)
    assert gate.arrived.wait(30), "the http_request step never reached the gate"

    gate.release()  # answers 400: not retryable, the run fails

    expect(row).to_have_attribute("data-status", "failed", timeout=LIVE_TIMEOUT_MS)
    expect(row.locator(".status")).to_have_text("failed")
    assert marker_survived(page), "the runs page was reloaded"


@pytest.mark.browser
def test_the_run_page_catches_up_after_its_socket_dropped_and_reconnected(
    viewer_page: Page, api, gate
):
    page = viewer_page
    publish(
        api,
        "browser-dropped",
        definition(
            http_step("call", f"{gate.url}/hook", config={"timeout_seconds": 60}),
            event="com.example.dropped",
        ),
    )
    run = run_of_event(api, "browser-dropped", send(api, cloudevent("com.example.dropped")))
    assert gate.arrived.wait(30), "the http_request step never reached the gate"
    page.goto(f"/runs/{run['id']}/")
    detail = page.locator("#run-detail")
    expect(detail).to_have_attribute("data-status", "running")
    wait_for_live(page)
    set_marker(page)

    hold_sockets(page)
    gate.release()  # the run fails while the page is disconnected
    wait_until(
        lambda: api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "failed",
        timeout=30,
        message="the run to fail",
    )
    expect(detail).to_have_attribute("data-status", "running")  # nothing arrived meanwhile

    release_sockets(page)

    wait_for_live(page)
    expect(detail).to_have_attribute("data-status", "failed", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#node-call")).to_have_attribute("data-state", "failed")
    expect(page.locator("#step-call")).to_contain_text("answered 400")
    assert marker_survived(page), "the run page was reloaded"


@pytest.mark.browser
def test_the_live_flow_gets_the_events_it_missed_while_disconnected(viewer_page: Page, api):
    page = viewer_page
    page.goto(f"/flow/?type={FLOW_TYPE}.missed")
    wait_for_live(page)
    first = send(api, cloudevent(f"{FLOW_TYPE}.missed", data={"n": 0}))
    expect(page.locator(f"#flow-event-{first}")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    set_marker(page)

    hold_sockets(page)
    missed = [send(api, cloudevent(f"{FLOW_TYPE}.missed", data={"n": n})) for n in (1, 2, 3)]
    release_sockets(page)

    wait_for_live(page)
    for event_id in missed:
        expect(page.locator(f"#flow-event-{event_id}")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    # Added above the rows the page kept, newest first, each once.
    ids = page.locator("#flow-rows tr.flow-row").evaluate_all(
        "rows => rows.map(r => Number(r.dataset.event))"
    )
    assert ids == [*reversed(missed), first]
    assert marker_survived(page), "the flow page was reloaded"


@pytest.mark.browser
def test_an_operator_turns_on_demo_traffic_and_sample_events_flow(page: Page, make_user):
    from workflows import demo_traffic

    log_in(page, make_user("operator").username)
    page.goto("/overview/")
    wait_for_live(page)
    try:
        page.locator("#demo-switch").click()
        expect(page.locator("#demo-traffic")).to_have_attribute("data-on", "1")
        expect(page.locator("#demo-switch")).to_have_text("Turn demo traffic off")

        page.goto("/flow/")
        wait_for_live(page)
        sample = page.locator("#flow-rows tr.flow-row", has_text="/demo/")
        expect(sample.first).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    finally:
        demo_traffic.switch(on=False, by="tests")
