"""Recovery in a real browser: a run fails on a server error, the server is fixed, and an
operator replays it from the failed step without repeating the step that succeeded."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS, log_in, marker_survived, set_marker
from tests.browser.test_live_dashboard import publish, run_of_event, send
from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Reply
from tests.waiting import wait_until


@pytest.mark.browser
def test_an_operator_replays_a_failed_run_from_the_failed_step(
    page: Page, api, recorder, make_user
):
    recorder.default = Reply(500, {"error": "the warehouse API is down"})
    recorder.answer(Reply(200, {"reserved": True}))  # the first call (step one) succeeds
    publish(
        api,
        "browser-replay",
        definition(
            http_step("reserve", f"{recorder.url}/reserve", config={"json": {"sku": "A-1"}}),
            http_step(
                "ship",
                f"{recorder.url}/ship",
                after=("reserve",),
                config={"json": {"sku": "A-1"}},
                retry={"max_attempts": 1},
            ),
            log_step("done", after=("ship",)),
        ),
    )
    event_id = send(api, cloudevent(data={"order": 11}))
    failed = run_of_event(api, "browser-replay", event_id)

    def finished():
        run = api.get(f"/api/v1/runs/{failed['id']}").json()
        return run if run["status"] in ("succeeded", "failed") else None

    assert wait_until(finished, timeout=60, message="the run to fail")["status"] == "failed"
    letters = api.get("/api/v1/dead-letters").json()["dead_letters"]
    assert [(x["run"], x["step"]) for x in letters] == [(failed["id"], "ship")]

    recorder.default = Reply(200, {"shipped": True})  # the server is fixed
    log_in(page, make_user("operator").username)
    page.goto(f"/runs/{failed['id']}/")
    page.get_by_role("button", name="Replay from failed step").click()

    expect(page).to_have_url(re.compile(rf"/runs/{failed['id']}/replay/\?from_step=failed$"))
    expect(page.locator("#plan-reserve")).to_have_attribute("data-action", "reuse")
    expect(page.locator("#plan-ship")).to_have_attribute("data-action", "run")
    expect(page.locator("#replay-warnings")).to_contain_text("SAME idempotency key")
    page.get_by_role("button", name="Confirm replay").click()

    expect(page).to_have_url(re.compile(r"/runs/(\d+)/$"))
    replay_id = int(re.search(r"/runs/(\d+)/$", page.url).group(1))
    assert replay_id != failed["id"]
    expect(page.locator("#run-replay-keys")).to_contain_text(
        f"Idempotency keys reused from run #{failed['id']}", timeout=LIVE_TIMEOUT_MS
    )

    set_marker(page)
    # The replay finishes while the page is open: the status arrives over the WebSocket.
    expect(page.locator("#run-detail")).to_have_attribute(
        "data-status", "succeeded", timeout=LIVE_TIMEOUT_MS
    )
    assert marker_survived(page), "the run page was reloaded"
    expect(page.locator("#compare-reserve")).to_have_attribute(
        "data-verdict", "reused", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#compare-ship")).to_have_attribute("data-verdict", "status differs")
    reserve_calls = [r for r in recorder.requests if r.path == "/reserve"]
    ship_calls = [r for r in recorder.requests if r.path == "/ship"]
    assert len(reserve_calls) == 1
    assert len(ship_calls) == 2
    assert ship_calls[0].headers["Idempotency-Key"] == ship_calls[1].headers["Idempotency-Key"]
    replay = api.get(f"/api/v1/runs/{replay_id}").json()
    assert {s["id"]: s["status"] for s in replay["steps"]} == {
        "reserve": "succeeded",
        "ship": "succeeded",
        "done": "succeeded",
    }
    assert api.get(f"/api/v1/dead-letters/{letters[0]['id']}").json()["resolved"] is True


@pytest.mark.browser
def test_a_viewer_sees_no_replay_button_and_is_refused_the_replay_page(page: Page, api, make_user):
    publish(
        api,
        "browser-no-replay",
        definition({"id": "boom", "kind": "fail", "config": {"message": "always"}}),
    )
    failed = run_of_event(api, "browser-no-replay", send(api, cloudevent()))
    wait_until(
        lambda: api.get(f"/api/v1/runs/{failed['id']}").json()["status"] == "failed",
        timeout=60,
        message="the run to fail",
    )
    log_in(page, make_user("viewer").username)

    page.goto(f"/runs/{failed['id']}/")
    expect(page.locator("#recovery")).to_have_attribute("data-can-operate", "false")
    expect(page.get_by_role("button", name="Replay from failed step")).to_have_count(0)
    response = page.goto(f"/runs/{failed['id']}/replay/?from_step=failed")

    assert response is not None and response.status == 403
