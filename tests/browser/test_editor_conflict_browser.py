"""Two people with the same workflow open in the editor, in two browsers, against the real
stack: when one saves, the other's canvas says so before it can overwrite anything, stops
saving, and Reload brings the other's version onto its canvas; when the socket's notice is
lost, the refused save says so instead, and Overwrite saves over the colleague on purpose."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS, log_in
from tests.browser.test_editor_browser import WIDE, drop_kind, node, publish
from tests.factories import definition, log_step


def open_editor_as(page: Page, username: str, slug: str) -> None:
    page.set_viewport_size(WIDE)
    log_in(page, username)
    page.goto(f"/workflows/{slug}/edit/")
    expect(page.locator("#editor-live")).to_have_attribute(
        "data-state", "open", timeout=LIVE_TIMEOUT_MS
    )


@pytest.mark.browser
def test_a_canvas_hears_of_a_colleagues_save_stops_saving_and_reloads_their_version(
    page: Page, new_context, make_user, api
):
    publish(api, "shared", definition(log_step("greet", message="hello")))
    alice, bob = make_user("editor"), make_user("editor")
    open_editor_as(page, alice.username, "shared")
    bobs = new_context().new_page()
    open_editor_as(bobs, bob.username, "shared")
    viewers = new_context().new_page()
    open_editor_as(viewers, make_user("viewer").username, "shared")

    # Alice adds a step; her autosave makes revision 1.
    drop_kind(page, '[data-palette-kind="log"]', 600, 300)
    expect(node(page, "log")).to_have_count(1)
    expect(page.locator("#save-status")).to_have_text(
        re.compile(r"^Draft saved \d"), timeout=LIVE_TIMEOUT_MS
    )
    assert api.get("/api/v1/workflows/shared").json()["draft_revision"] == 1

    # Bob's canvas hears of it over its socket, before he saves anything.
    banner = bobs.locator("#conflict-banner")
    expect(banner).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(banner).to_contain_text(
        re.compile(
            rf"{alice.username} changed this workflow at \d\d:\d\d\. "
            r"Reload to see their version, or overwrite with yours\."
        )
    )

    # A viewer has no edits to lose: the canvas just follows the draft.
    expect(node(viewers, "log")).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(viewers.locator("#conflict-banner")).to_have_count(0)

    # Bob edits anyway: nothing is saved over Alice's version while the banner is up.
    drop_kind(bobs, '[data-palette-kind="delay"]', 600, 450)
    expect(node(bobs, "delay")).to_have_count(1)
    expect(bobs.locator("#save-status")).to_have_attribute("data-state", "conflict")
    expect(bobs.locator("#save-status")).to_contain_text(f"Not saved: {alice.username}")
    stored = api.get("/api/v1/workflows/shared").json()
    assert [s["id"] for s in stored["draft"]["steps"]] == ["greet", "log"]
    assert stored["draft_revision"] == 1

    # Reload: Alice's version replaces Bob's canvas, and saving resumes from it.
    bobs.locator("#conflict-reload").click()
    expect(banner).to_be_hidden()
    expect(node(bobs, "log")).to_have_count(1)
    expect(node(bobs, "delay")).to_have_count(0)
    expect(bobs.locator("#save-status")).to_contain_text(f"Draft saved by {alice.username}")
    expect(bobs.locator('[data-action="undo"]')).to_be_enabled()  # his version, one undo away


# The socket's frames are hints that may be lost: this page never hears of saves, so only
# the server's refusal of its own save can tell it.
DEAF_TO_DRAFT_FRAMES = """
(() => {
  const Native = window.WebSocket;
  window.WebSocket = function (url, protocols) {
    const socket = new Native(url, protocols);
    Object.defineProperty(socket, "onmessage", {
      set(handler) {
        socket.addEventListener("message", (e) => {
          if (JSON.parse(e.data).type !== "draft") handler(e);
        });
      },
    });
    return socket;
  };
  Object.assign(window.WebSocket, Native);
  window.WebSocket.prototype = Native.prototype;
})();
"""


@pytest.mark.browser
def test_a_save_refused_as_stale_stops_autosave_and_overwrite_saves_over_the_colleague(
    page: Page, new_context, make_user, api
):
    from workflows.models import AuditEntry

    publish(api, "contested", definition(log_step("greet", message="hello")))
    alice, bob = make_user("editor"), make_user("editor")
    open_editor_as(page, alice.username, "contested")
    context = new_context()
    context.add_init_script(DEAF_TO_DRAFT_FRAMES)
    bobs = context.new_page()
    saves: list[dict] = []
    bobs.on(
        "request",
        lambda r: (
            saves.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/edit/draft")
            else None
        ),
    )
    open_editor_as(bobs, bob.username, "contested")

    drop_kind(page, '[data-palette-kind="log"]', 600, 300)
    expect(page.locator("#save-status")).to_have_text(
        re.compile(r"^Draft saved \d"), timeout=LIVE_TIMEOUT_MS
    )

    # Bob's save is refused (409): the banner comes from the answer, and nothing retries.
    drop_kind(bobs, '[data-palette-kind="delay"]', 600, 450)
    banner = bobs.locator("#conflict-banner")
    expect(banner).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(banner).to_contain_text(f"{alice.username} changed this workflow at")
    expect(bobs.locator("#save-status")).to_have_attribute("data-state", "conflict")
    drop_kind(bobs, '[data-palette-kind="log"]', 300, 450)
    expect(bobs.locator("#save-status")).to_contain_text(f"Not saved: {alice.username}")
    assert api.get("/api/v1/workflows/contested").json()["draft_revision"] == 1

    # Overwrite: Bob's canvas is saved over Alice's version, on purpose and on the record.
    bobs.locator("#conflict-overwrite").click()
    expect(banner).to_be_hidden(timeout=LIVE_TIMEOUT_MS)
    expect(bobs.locator("#save-status")).to_have_attribute("data-state", "saved")
    stored = api.get("/api/v1/workflows/contested").json()
    assert [s["id"] for s in stored["draft"]["steps"]] == ["greet", "delay", "log"]
    assert stored["draft_revision"] == 2
    assert [(s["baseRevision"], s["force"]) for s in saves] == [(0, False), (0, True)]
    assert AuditEntry.objects.filter(action="workflow.draft_overwrite").count() == 1

    # Alice's canvas (which hears its socket) learns of Bob's overwrite at once.
    expect(page.locator("#conflict-banner")).to_contain_text(
        f"{bob.username} changed this workflow at", timeout=LIVE_TIMEOUT_MS
    )
