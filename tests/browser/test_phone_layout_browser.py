"""Every dashboard page at 390 px (a phone) in a real browser: the page never scrolls
sideways, the navigation collapses behind a button that opens it, long error text wraps
inside its box; and a wide screen is used rather than left empty."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS, log_in
from tests.browser.test_content_security_policy_browser import PAGES, publish_and_run
from tests.browser.test_replay_onto_fix_browser import screenshot
from tests.waiting import wait_until

PHONE = {"width": 390, "height": 844}
# One unbroken "word" as long error texts often are (a URL, a token, a stack of ids).
LONG_WORD = "upstream-refused:" + "x" * 600
LONG_TEXT = ("the payment service answered 503 Service Unavailable " * 20).strip()


def page_overflow(page: Page) -> dict:
    return page.evaluate(
        "() => ({scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth})"
    )


def long_texts(run_id: int) -> int:
    """A failed run, a failed step and an open dead letter, each with long error text
    (written once the run has ended, so that nothing writes over them)."""
    from workflows.events.models import DeadLetter
    from workflows.runs.models import Run, StepRun

    wait_until(
        lambda: Run.objects.get(pk=run_id).finished_at is not None,
        timeout=30,
        message="the run to end",
    )

    Run.objects.filter(pk=run_id).update(status="failed", error=f"{LONG_WORD} {LONG_TEXT}")
    StepRun.objects.filter(run_id=run_id).update(status="failed", error=LONG_WORD)
    letter = DeadLetter.objects.create(
        kind="step",
        reason=f"{LONG_WORD} {LONG_TEXT}",
        payload={"detail": LONG_WORD},
        run_id=run_id,
        step_id="received",
    )
    return letter.pk


@pytest.mark.browser
def test_every_page_fits_a_phone_without_scrolling_sideways(page: Page, make_user, api):
    run_id = publish_and_run(api)
    letter_id = long_texts(run_id)
    event_id = api.get(f"/api/v1/runs/{run_id}").json()["event"]
    page.set_viewport_size(PHONE)
    log_in(page, make_user("admin").username)

    paths = [
        *PAGES,
        f"/runs/{run_id}/",
        f"/events/{event_id}/",
        f"/events/{event_id}/lineage/",
        f"/dead-letters/{letter_id}/",
        "/secrets/",
    ]
    wide = {}
    for path in paths:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        page.wait_for_load_state("load")
        sizes = page_overflow(page)
        if sizes["scroll"] > sizes["inner"]:
            wide[path] = sizes["scroll"]
    assert wide == {}, f"pages wider than {PHONE['width']} px: {wide}"


@pytest.mark.browser
def test_long_error_text_wraps_inside_its_box_on_a_phone(page: Page, make_user, api):
    run_id = publish_and_run(api)
    long_texts(run_id)
    page.set_viewport_size(PHONE)
    log_in(page, make_user("viewer").username)

    page.goto(f"/runs/{run_id}/")
    error = page.locator("#run-detail > .facts dd.error")
    expect(error).to_contain_text("upstream-refused", timeout=LIVE_TIMEOUT_MS)
    # A live frame may replace the run's facts between two reads: measure the one there now.
    box = wait_until(error.bounding_box, timeout=LIVE_TIMEOUT_MS / 1000, message="the error's box")
    assert box["x"] + box["width"] <= PHONE["width"]
    assert box["height"] > 100  # wrapped onto many lines, not one line running off
    screenshot(page, "phone-run")

    page.goto("/dead-letters/")
    reason = page.locator("#dead-letters td.error").first
    expect(reason).to_contain_text("upstream-refused")
    box = wait_until(reason.bounding_box, timeout=LIVE_TIMEOUT_MS / 1000, message="its box")
    assert box["width"] < 700  # capped: it wraps, it does not widen
    table = page.evaluate(
        "() => { const t = document.getElementById('dead-letters');"
        " return {client: t.clientWidth, scroll: t.scrollWidth,"
        " overflow: getComputedStyle(t).overflowX}; }"
    )
    # What is still wider than a phone scrolls inside the table's own box.
    assert table["client"] <= PHONE["width"] and table["overflow"] == "auto"
    assert page_overflow(page)["scroll"] <= PHONE["width"]


@pytest.mark.browser
def test_the_navigation_collapses_on_a_phone_and_the_menu_button_opens_it(page: Page, make_user):
    page.set_viewport_size(PHONE)
    log_in(page, make_user("viewer").username)
    nav = page.locator("#site-nav")
    menu = page.get_by_role("button", name="Menu")

    expect(nav).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(nav).to_be_visible()
    screenshot(page, "phone-menu")
    nav.get_by_role("link", name="Dead letters").click()
    expect(page).to_have_url(re.compile(r"/dead-letters/$"))
    expect(page.locator("#site-nav")).to_be_hidden()  # a new page starts closed
    page.get_by_role("button", name="Menu").click()
    page.keyboard.press("Escape")
    expect(page.locator("#site-nav")).to_be_hidden()


@pytest.mark.browser
def test_a_wide_screen_shows_the_navigation_with_icons_and_uses_the_width(page: Page, make_user):
    page.set_viewport_size({"width": 1920, "height": 1080})
    log_in(page, make_user("viewer").username)

    expect(page.get_by_role("button", name="Menu")).to_be_hidden()
    expect(page.locator("#site-nav")).to_be_visible()
    assert page.locator("#site-nav a .ico").count() == page.locator("#site-nav a").count()
    main = page.locator("main").bounding_box()
    assert main is not None and main["width"] > 1600  # the old cap was 1,200 px
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon and page.request.get(icon).status == 200
