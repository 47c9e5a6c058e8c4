"""The Content-Security-Policy in a real browser: every main page loads, goes live and
works with no violation reported, and the policy is in force (an injected inline script is
refused)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS, log_in, wait_for_live
from tests.factories import cloudevent, definition, log_step
from tests.waiting import wait_until

PAGES = [
    "/overview/",
    "/runs/",
    "/workflows/",
    "/events/",
    "/flow/",
    "/system/",
    "/connections/",
    "/schemas/",
    "/dead-letters/",
    "/replays/",
    "/redrive/",
    "/audit/",
    "/events/send/",
]


class Violations:
    """CSP violations, from the console and from `securitypolicyviolation` events."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on(
            "console",
            lambda message: (
                self.console.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        # Init scripts come from the browser's debugging protocol, which the policy does not
        # govern; the listener then records what the page itself is refused.
        page.add_init_script(
            "window.__csp = [];"
            "document.addEventListener('securitypolicyviolation', e =>"
            " window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )

    def on_page(self) -> list[str]:
        return self.page.evaluate("window.__csp || []")


def publish_and_run(api) -> int:
    body = definition(log_step("received"))
    assert api.put("/api/v1/workflows/csp-orders", json=body).status_code in (200, 201)
    assert api.post("/api/v1/workflows/csp-orders/publish").status_code == 201
    sent = api.post(
        "/api/v1/events",
        json=cloudevent(),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert sent.status_code == 202, sent.text
    event_id = sent.json()["id"]

    def run_id():
        runs = api.get("/api/v1/runs", params={"workflow": "csp-orders"}).json()["runs"]
        return next((r["id"] for r in runs if r["event"] == event_id), None)

    return wait_until(run_id, timeout=30, message="a run of csp-orders")


@pytest.mark.browser
def test_the_main_pages_load_and_go_live_with_no_policy_violation(page: Page, make_user, api):
    run_id = publish_and_run(api)
    violations = Violations(page)

    page.goto("/login/")
    assert violations.on_page() == []
    log_in(page, make_user("admin").username)
    for path in [*PAGES, f"/runs/{run_id}/", "/workflows/csp-orders/edit/"]:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_load_state("load")
        assert violations.on_page() == [], path
    # The live pages' sockets open under the policy (connect-src 'self').
    page.goto("/runs/")
    wait_for_live(page)
    page.goto("/workflows/csp-orders/edit/")
    expect(page.locator("#editor-live")).to_have_attribute(
        "data-state", "open", timeout=LIVE_TIMEOUT_MS
    )
    # htmx still posts and swaps (the new event type form answers with its errors in place).
    page.goto("/schemas/")
    page.get_by_role("button", name="Register event type").click()
    expect(page.locator("#new-type-name-error")).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    assert violations.on_page() == []
    assert violations.console == []


@pytest.mark.browser
def test_the_policy_refuses_an_injected_inline_script(page: Page, make_user):
    # (Code the test itself evaluates is exempt from the policy in Chromium, eval included,
    # so the absence of 'unsafe-eval' is asserted on the header instead.)
    violations = Violations(page)
    log_in(page, make_user("viewer").username)

    ran = page.evaluate(
        """() => {
            const script = document.createElement("script");
            script.textContent = "window.__injected = true";
            document.head.appendChild(script);
            return window.__injected === true;
        }"""
    )

    assert ran is False
    wait_until(
        lambda: any(v.startswith("script-src") for v in violations.on_page()),
        timeout=10,
        message="the refused inline script reported as a violation",
    )
