"""The visual workflow editor in a real browser, against the real stack: building a workflow
with the mouse, publishing it and watching a run light up the nodes; the import/export round
trip; the version diff and restore; undo and problem markers; the read-only view."""

from __future__ import annotations

import re

import pytest
import yaml
from playwright.sync_api import Locator, Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS, log_in
from tests.factories import cloudevent, definition, http_step, log_step
from tests.waiting import wait_until

CE_JSON = {"Content-Type": "application/cloudevents+json"}
WIDE = {"width": 1600, "height": 1000}
OK_GREEN = "rgb(31, 138, 76)"  # --ok in signalbox.css


def node(page: Page, step_id: str) -> Locator:
    return page.locator(f'.drawflow-node[data-step="{step_id}"]')


def centre(locator: Locator) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not on the page"
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def drag_to(page: Page, source: Locator, x: float, y: float) -> None:
    """Press on `source`, move the mouse in steps, release at (x, y): a person's drag."""
    source.scroll_into_view_if_needed()
    sx, sy = centre(source)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move((sx + x) / 2, (sy + y) / 2, steps=8)
    page.mouse.move(x, y, steps=8)
    page.mouse.up()


def canvas_place(locator: Locator) -> tuple[float, float]:
    """Where Drawflow draws a node on its canvas (style left/top), whatever the zoom and pan."""
    x, y = locator.evaluate("el => [parseFloat(el.style.left), parseFloat(el.style.top)]")
    return x, y


def drop_kind(page: Page, palette_item: str, dx: float, dy: float) -> None:
    canvas = page.locator("#editor-canvas").bounding_box()
    drag_to(page, page.locator(palette_item), canvas["x"] + dx, canvas["y"] + dy)


def wire(page: Page, from_step: str, port: str, to_step: str) -> None:
    output = node(page, from_step).locator(f'.output[data-port="{port}"]')
    drag_to(page, output, *centre(node(page, to_step).locator(".input")))


def panel_of(page: Page, step_id: str) -> Locator:
    panel = page.locator(f'#node-panel[data-step-id="{step_id}"]')
    expect(panel).to_be_visible()
    return panel


def expect_saved_without_problems(page: Page) -> None:
    expect(page.locator("#save-status")).to_have_attribute(
        "data-state", "saved", timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#problems-toggle")).to_have_text("No problems")


def publish(api, slug: str, body: dict, note: str = "") -> None:
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    published = api.post(f"/api/v1/workflows/{slug}/publish", json={"note": note})
    assert published.status_code == 201, published.text


def open_editor(page: Page, make_user, slug: str, role: str = "editor") -> None:
    page.set_viewport_size(WIDE)
    log_in(page, make_user(role).username)
    page.goto(f"/workflows/{slug}/edit/")
    expect(page.locator("#editor-live")).to_have_attribute(
        "data-state", "open", timeout=LIVE_TIMEOUT_MS
    )


@pytest.mark.browser
def test_a_workflow_built_with_the_mouse_is_published_and_its_run_lights_up_the_nodes(
    page: Page, make_user, api, recorder
):
    page.set_viewport_size(WIDE)
    log_in(page, make_user("editor").username)
    page.goto("/workflows/")
    page.get_by_role("link", name="New workflow").click()
    page.get_by_label("Slug").fill("mouse-built")
    page.get_by_label("Name").fill("Built with the mouse")
    page.get_by_role("button", name="Create and open the editor").click()
    expect(page).to_have_url(re.compile(r"/workflows/mouse-built/edit/$"))
    expect(page.locator("#canvas-empty")).to_be_visible()

    # The trigger, then three kinds of step, each dragged from the palette and configured.
    drop_kind(page, '[data-palette-trigger="event"]', 110, 90)
    expect(page.locator('#node-panel[data-node="trigger"]')).to_be_visible()
    page.get_by_label("Event type").fill("com.example.order.placed")

    drop_kind(page, '[data-palette-kind="http_request"]', 380, 90)
    panel_of(page, "http_request").get_by_label("URL").fill(f"{recorder.url}/orders")

    drop_kind(page, '[data-palette-kind="condition"]', 380, 320)
    expression = panel_of(page, "condition").get_by_label("Expression")
    # The panel arrives by htmx: type only once htmx has wired its live check, or the
    # first input event goes unheard (seen on a loaded CI machine).
    page.wait_for_function("el => !!el['htmx-internal-data']", arg=expression.element_handle())
    expression.fill("steps.http_request.output.status ==")
    expect(page.locator("#chk-config-expression")).to_contain_text("syntax error", timeout=15_000)
    expression.fill("steps.http_request.output.status == 200")
    expect(page.locator("#chk-config-expression")).to_contain_text(
        "valid expression", timeout=15_000
    )

    drop_kind(page, '[data-palette-kind="log"]', 680, 250)
    panel_of(page, "log").get_by_label("Message").fill("order {{ event.data.order }} accepted")
    drop_kind(page, '[data-palette-kind="log"]', 680, 460)
    panel_of(page, "log_2").get_by_label("Message").fill("order refused")

    # The trigger starts every step without incoming edges; wire the rest by their ports.
    trigger_edges = page.locator(".connection.sb-trigger-edge")
    expect(trigger_edges).to_have_count(4)  # nothing wired yet: every step is a root
    wire(page, "http_request", "success", "condition")
    wire(page, "condition", "true", "log")
    wire(page, "condition", "false", "log_2")
    expect(trigger_edges).to_have_count(1)
    expect(page.locator(".connection:not(.sb-trigger-edge)")).to_have_count(3)
    expect_saved_without_problems(page)

    stored = api.get("/api/v1/workflows/mouse-built").json()["draft"]
    assert [t["event"] for t in stored["triggers"]] == ["com.example.order.placed"]
    assert set(stored["triggers"][0]["position"]) == {"x", "y"}  # kept through its form
    assert [(s["id"], s["kind"], s.get("after")) for s in stored["steps"]] == [
        ("http_request", "http_request", None),
        ("condition", "condition", ["http_request"]),
        ("log", "log", None),
        ("log_2", "log", None),
    ]
    assert stored["edges"] == [
        {"from": "condition", "to": "log", "port": "true"},
        {"from": "condition", "to": "log_2", "port": "false"},
    ]
    assert all("position" in s for s in stored["steps"])

    page.locator('[data-panel="publish"]').click()
    page.get_by_label("Note").fill("first version, built in the browser")
    page.get_by_role("button", name="Publish the draft").click()
    expect(page.locator("#publish-result")).to_contain_text("Published v1")
    expect(page.locator("#editor-version")).to_have_text("live: v1")

    page.locator('[data-panel="runs"]').click()
    expect(page.locator("#follow-runs")).to_be_checked()
    response = api.post("/api/v1/events", json=cloudevent(data={"order": 7}), headers=CE_JSON)
    assert response.status_code == 202, response.text

    for step_id in ("http_request", "condition", "log"):
        expect(node(page, step_id)).to_have_attribute(
            "data-run-status", "succeeded", timeout=LIVE_TIMEOUT_MS
        )
    expect(node(page, "log_2")).to_have_attribute("data-run-status", "skipped")
    expect(node(page, "log")).to_have_css("border-top-color", OK_GREEN)
    expect(page.locator("#run-banner-status")).to_have_text("succeeded")
    assert len(recorder.requests) == 1
    assert recorder.requests[0].path == "/orders"

    # A node of a shown run opens that run's input and output.
    node(page, "log").locator(".sb-title").click()
    expect(page.locator("#run-step-output")).to_contain_text("order 7 accepted")


@pytest.mark.browser
def test_a_workflow_exported_as_yaml_and_imported_back_replaces_the_draft(
    page: Page, make_user, api, tmp_path
):
    publish(api, "round-trip", definition(log_step("greet", message="hello")))
    open_editor(page, make_user, "round-trip")
    page.locator('[data-panel="code"]').click()

    with page.expect_download() as download:
        page.locator("#export-yaml").click()
    exported = tmp_path / "round-trip.yaml"
    download.value.save_as(exported)
    raw = yaml.safe_load(exported.read_text())
    assert raw == api.get("/api/v1/workflows/round-trip").json()["draft"]

    # An invalid file says what is wrong and changes nothing.
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**raw, "steps": [{"id": "Greet", "kind": "log"}]}))
    page.locator("#import-file").set_input_files(broken)
    page.get_by_role("button", name="Import into the draft").click()
    errors = page.locator("#import-errors")
    expect(errors).to_contain_text("the draft was not changed")
    expect(errors).to_contain_text("/steps/0/id")
    expect(node(page, "greet")).to_have_count(1)

    # The edited file goes in whole and the canvas shows it.
    raw["steps"][0]["config"]["message"] = "hello again"
    raw["steps"].append(log_step("bye", after=("greet",), message="goodbye"))
    exported.write_text(yaml.safe_dump(raw))
    page.locator("#import-file").set_input_files(exported)
    page.get_by_role("button", name="Import into the draft").click()
    expect(page.locator("#import-result")).to_contain_text("round-trip.yaml imported")
    expect(node(page, "bye")).to_have_count(1)
    expect(node(page, "greet")).to_contain_text("hello again")
    assert api.get("/api/v1/workflows/round-trip").json()["draft"] == raw
    assert api.get("/api/v1/workflows/round-trip").json()["published_version"] == 1


@pytest.mark.browser
def test_the_version_diff_shows_what_changed_and_an_old_version_can_be_restored(
    page: Page, make_user, api
):
    first = definition(
        http_step("charge", "https://pay.example.com/v1"), log_step("done", after=("charge",))
    )
    publish(api, "versioned", first, note="first")
    second = definition(
        http_step("charge", "https://pay.example.com/v2"),
        log_step("done", after=("charge",)),
        log_step("audit", after=("done",)),
    )
    publish(api, "versioned", second, note="second")
    open_editor(page, make_user, "versioned")

    page.locator('[data-panel="versions"]').click()
    expect(page.locator("#version-2")).to_contain_text("second")
    expect(page.locator("#version-1")).to_contain_text("first")
    expect(page.locator("#diff-from")).to_have_value("1")
    expect(page.locator("#diff-to")).to_have_value("2")
    page.get_by_role("button", name="Show changes").click()

    changed = page.locator('#diff-step-charge[data-change="changed"]')
    expect(changed.locator('tr[data-key="url"] .before')).to_contain_text("pay.example.com/v1")
    expect(changed.locator('tr[data-key="url"] .after')).to_contain_text("pay.example.com/v2")
    expect(page.locator('#diff-step-audit[data-change="added"]')).to_be_visible()
    expect(page.locator("#diff-step-done")).to_have_count(0)
    expect(page.locator("#diff-edges")).to_contain_text("done —success→ audit")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#version-1").get_by_role("button", name="Restore into the draft").click()
    expect(page.locator("#versions-panel")).to_contain_text("v1 restored into the draft")
    expect(node(page, "audit")).to_have_count(0)
    assert api.get("/api/v1/workflows/versioned").json()["draft"] == first
    assert api.get("/api/v1/workflows/versioned").json()["published_version"] == 2


@pytest.mark.browser
def test_problems_show_on_the_node_and_undo_and_redo_take_edits_back(page: Page, make_user, api):
    publish(api, "undoable", definition(log_step("first")))
    open_editor(page, make_user, "undoable")

    drop_kind(page, '[data-palette-kind="http_request"]', 420, 300)
    added = node(page, "http_request")
    expect(added).to_have_attribute("data-problems", "1", timeout=LIVE_TIMEOUT_MS)
    expect(added.locator(".sb-problems")).to_have_attribute(
        "title", "config: 'url' is a required property"
    )
    expect(page.locator("#problems-toggle")).to_have_text("1 problem")

    page.locator('[data-action="undo"]').click()
    expect(added).to_have_count(0)
    expect(page.locator("#problems-toggle")).to_have_text("No problems", timeout=LIVE_TIMEOUT_MS)
    page.locator('[data-action="redo"]').click()
    expect(added).to_have_count(1)

    # Selected, then deleted with the Delete key; the stored draft follows.
    added.locator(".sb-title").click()
    page.locator("#editor-canvas").press("Delete")
    expect(added).to_have_count(0)
    expect_saved_without_problems(page)
    steps = api.get("/api/v1/workflows/undoable").json()["draft"]["steps"]
    assert [s["id"] for s in steps] == ["first"]


@pytest.mark.browser
def test_a_viewer_sees_the_canvas_and_the_config_but_cannot_change_them(page: Page, make_user, api):
    publish(api, "look-only", definition(log_step("only", message="hello")))
    open_editor(page, make_user, "look-only", role="viewer")

    expect(page.locator("#read-only-badge")).to_be_visible()
    expect(page.locator(".palette")).to_have_count(0)
    expect(page.locator('[data-panel="publish"]')).to_have_count(0)
    node(page, "only").locator(".sb-title").click()
    message = panel_of(page, "only").get_by_label("Message")
    expect(message).to_have_value("hello")
    expect(message).to_be_disabled()


@pytest.mark.browser
def test_a_moved_trigger_is_stored_in_the_draft_and_stays_there_after_a_reload(
    page: Page, make_user, api
):
    publish(api, "placed", definition(log_step("first")))
    open_editor(page, make_user, "placed")
    trigger = page.locator('.drawflow-node[data-trigger="0"]')
    start = canvas_place(trigger)

    x, y = centre(trigger.locator(".sb-title"))
    drag_to(page, trigger.locator(".sb-title"), x + 150, y + 120)
    dragged = canvas_place(trigger)
    assert dragged[0] > start[0] + 50 and dragged[1] > start[1] + 50
    # A move is an edit like any other: undone, redone.
    page.locator('[data-action="undo"]').click()
    expect(trigger).to_have_css("left", f"{start[0]:g}px")
    page.locator('[data-action="redo"]').click()
    moved = canvas_place(trigger)
    assert abs(moved[0] - dragged[0]) <= 1 and abs(moved[1] - dragged[1]) <= 1

    def stored_place():
        return api.get("/api/v1/workflows/placed").json()["draft"]["triggers"][0].get("position")

    wanted = {"x": moved[0], "y": moved[1]}
    wait_until(lambda: stored_place() == wanted, message=f"the draft to store {wanted}")
    expect(page.locator("#save-status")).to_have_attribute("data-state", "saved")

    page.reload()
    expect(page.locator("#editor-live")).to_have_attribute(
        "data-state", "open", timeout=LIVE_TIMEOUT_MS
    )
    after = canvas_place(trigger)
    assert abs(after[0] - moved[0]) <= 1 and abs(after[1] - moved[1]) <= 1, (after, moved)

    # Auto-layout places (and stores) the trigger too: left of the step it starts.
    page.locator('[data-action="layout"]').click()
    expect(trigger).to_have_css("left", f"{start[0]:g}px")
    laid = {"x": start[0], "y": start[1]}
    wait_until(lambda: stored_place() == laid, message=f"the draft to store {laid}")
