"""The editor canvas in a real browser, driven with the mouse: where dropped nodes land,
port labels that are never cut, kinds told apart by colour and icon, the minimap, the
auto-layout of a large workflow, and the problems a run would hit shown before publishing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import LIVE_TIMEOUT_MS
from tests.browser.test_editor_browser import (
    drag_to,
    drop_kind,
    node,
    open_editor,
    panel_of,
    publish,
)
from tests.factories import definition, http_step, log_step

GUARDED = "http://10.20.30.40/hook"  # never dialled: the editor judges it, nobody calls it


def screenshot(page: Page, name: str) -> None:
    """`SIGNALBOX_SCREENSHOTS=docs/screenshots` regenerates docs/editor.md's pictures."""
    folder = os.environ.get("SIGNALBOX_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def boxes(page: Page, selector: str) -> list[dict]:
    return page.locator(selector).evaluate_all(
        """els => els.map(el => {
            const r = el.getBoundingClientRect();
            return {x: r.left, y: r.top, w: r.width, h: r.height,
                    step: el.dataset.step || '', trigger: el.dataset.trigger || ''};
        })"""
    )


def overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def as_box(bounding: dict | None) -> dict:
    assert bounding is not None, "not on the page"
    return {"x": bounding["x"], "y": bounding["y"], "w": bounding["width"], "h": bounding["height"]}


def within(inner: dict, outer: dict) -> bool:
    return (
        inner["x"] >= outer["x"] - 0.5
        and inner["y"] >= outer["y"] - 0.5
        and inner["x"] + inner["w"] <= outer["x"] + outer["w"] + 0.5
        and inner["y"] + inner["h"] <= outer["y"] + outer["h"] + 0.5
    )


def assert_no_overlaps(page: Page) -> list[dict]:
    found = boxes(page, ".drawflow-node")
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            assert not overlap(a, b), f"{a} overlaps {b}"
    return found


def assert_labels_whole(page: Page) -> None:
    """Every port label shows all its text, inside its own node, under no other node."""
    labels = page.locator(".sb-port-label").evaluate_all(
        """els => els.map(el => {
            const r = el.getBoundingClientRect();
            const n = el.closest('.drawflow-node').getBoundingClientRect();
            return {text: el.textContent, scroll: el.scrollWidth, client: el.clientWidth,
                    box: {x: r.left, y: r.top, w: r.width, h: r.height},
                    node: {x: n.left, y: n.top, w: n.width, h: n.height}};
        })"""
    )
    assert labels, "no port labels on the canvas"
    nodes = boxes(page, ".drawflow-node")
    for label in labels:
        assert label["text"] and label["scroll"] <= label["client"], label
        assert within(label["box"], label["node"]), label
        others = [n for n in nodes if n["x"] != label["node"]["x"] or n["y"] != label["node"]["y"]]
        assert not any(overlap(label["box"], n) for n in others), label


@pytest.mark.browser
def test_nodes_dropped_on_one_spot_land_apart_in_view_with_their_labels_whole(
    page: Page, make_user, api
):
    publish(api, "crowded", definition(log_step("first")))
    open_editor(page, make_user, "crowded")
    canvas = as_box(page.locator("#editor-canvas").bounding_box())

    # Five steps dropped one after another on the same spot (an if/else among them), then
    # one dropped at the canvas's right edge, against the side panel.
    for _ in range(4):
        drop_kind(page, '[data-palette-kind="http_request"]', 500, 300)
    drop_kind(page, '[data-palette-kind="condition"]', 500, 300)
    drop_kind(page, '[data-palette-kind="log"]', canvas["w"] - 6, 200)
    expect(page.locator(".drawflow-node")).to_have_count(8)  # with `first` and the trigger

    found = assert_no_overlaps(page)
    side = as_box(page.locator("#side-panel").bounding_box())
    for box in found:
        assert within(box, canvas), f"{box} is not inside the canvas {canvas}"
        assert not overlap(box, side), f"{box} is under the side panel {side}"
    assert_labels_whole(page)
    expect(
        node(page, "condition").locator('.output[data-port="false"] .sb-port-label')
    ).to_have_text("false")
    expect(node(page, "http_request").locator(".sb-port-label")).to_have_text(
        ["success", "failure"]
    )


@pytest.mark.browser
def test_step_kinds_are_told_apart_by_colour_and_icon(page: Page, make_user, api):
    steps = [
        http_step("call", "https://hooks.example.com/x"),
        {"id": "check", "kind": "condition", "config": {"expression": "true"}, "after": ["call"]},
        log_step("note", after=("check",)),
        {"id": "wait", "kind": "delay", "config": {"seconds": 1}, "after": ["note"]},
    ]
    publish(api, "colourful", definition(*steps))
    open_editor(page, make_user, "colourful")

    looks = {}
    for step in steps:
        element = node(page, step["id"])
        looks[step["id"]] = (
            element.evaluate("el => getComputedStyle(el).borderLeftColor"),
            element.locator(".sb-icon svg").evaluate("el => el.innerHTML"),
            element.locator(".sb-icon").evaluate("el => getComputedStyle(el).color"),
        )
    colours = [look[0] for look in looks.values()]
    icons = [look[1] for look in looks.values()]
    assert len(set(colours)) == len(steps), looks
    assert len(set(icons)) == len(steps), looks
    for border, _svg, tint in looks.values():
        assert border == tint  # the icon wears its kind's colour too
    trigger = page.locator('.drawflow-node[data-trigger="0"]')
    assert trigger.evaluate("el => getComputedStyle(el).borderLeftColor") not in colours
    # The palette shows each kind in the same colour as its nodes.
    palette_tint = page.locator('[data-palette-kind="http_request"] .pi-icon').evaluate(
        "el => getComputedStyle(el).color"
    )
    assert palette_tint == looks["call"][0]


def fifty_steps() -> dict:
    """A root fanning out three ways per level (1, 3, 9, 27 and 10 steps), every step
    stored at one place: the canvas starts as a heap."""
    steps = [log_step("s0")]
    for i in range(1, 50):
        steps.append(log_step(f"s{i}", after=(f"s{(i - 1) // 3}",)))
    for step in steps:
        step["position"] = {"x": 400, "y": 200}
    return definition(*steps)


@pytest.mark.browser
def test_auto_layout_lays_fifty_steps_left_to_right_and_the_minimap_moves_the_view(
    page: Page, make_user, api
):
    raw = fifty_steps()
    publish(api, "fifty", raw)
    open_editor(page, make_user, "fifty")
    expect(page.locator(".drawflow-node")).to_have_count(51)

    page.locator('[data-action="layout"]').click()
    expect(page.locator("#save-status")).to_have_attribute(
        "data-state", "saved", timeout=LIVE_TIMEOUT_MS
    )
    found = {b["step"]: b for b in assert_no_overlaps(page) if b["step"]}
    for step in raw["steps"]:
        for before in step.get("after", []):
            left, right = found[before], found[step["id"]]
            assert left["x"] + left["w"] < right["x"], f"{before} is not left of {step['id']}"
    trigger = boxes(page, '.drawflow-node[data-trigger="0"]')[0]
    assert trigger["x"] + trigger["w"] < found["s0"]["x"]
    assert_labels_whole(page)
    stored = api.get("/api/v1/workflows/fifty").json()["draft"]["steps"]
    assert len({(s["position"]["x"], s["position"]["y"]) for s in stored}) == 50

    # The minimap draws every node; a click on one brings it into view.
    minimap = page.locator("#editor-minimap")
    expect(minimap).to_be_visible()
    expect(minimap.locator(".mm-node")).to_have_count(51)
    expect(minimap.locator(".mm-view")).to_have_count(1)
    page.locator('[data-action="zoom-reset"]').click()
    expect(page.locator("#zoom-level")).to_have_text("100%")
    canvas = as_box(page.locator("#editor-canvas").bounding_box())
    # At 100% the 27 steps of one column cannot all be in view: take one that is not.
    hidden = [
        b["step"] for b in boxes(page, ".drawflow-node") if b["step"] and not within(b, canvas)
    ]
    assert hidden, "every step is in view at 100%"
    target = node(page, hidden[-1])
    drawflow_id = target.evaluate("el => el.id.slice(5)")
    dot = minimap.locator(f'.mm-node[data-node="{drawflow_id}"]').bounding_box()
    page.mouse.click(dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
    assert within(as_box(target.bounding_box()), canvas), (
        f"the minimap did not bring {hidden[-1]} into view"
    )
    screenshot(page, "editor-layout")


@pytest.mark.browser
def test_problems_a_run_would_hit_are_shown_before_publishing_and_refuse_it(
    page: Page, make_user, api
):
    publish(
        api,
        "preflight",
        definition(
            http_step("charge", "https://pay.example.com/v1"),
            log_step("notify", after=("charge",), message="paid: {{ steps.charge.output.status }}"),
        ),
    )
    open_editor(page, make_user, "preflight")
    expect(page.locator("#problems-toggle")).to_have_text("No problems")

    # Deleting the step another one reads: the reader shows the problem at once.
    node(page, "charge").locator(".sb-title").click()
    page.locator("#editor-canvas").press("Delete")
    expect(node(page, "charge")).to_have_count(0)
    expect(page.locator("#problems-toggle")).to_have_text("1 problem", timeout=LIVE_TIMEOUT_MS)
    expect(node(page, "notify")).to_have_attribute("data-problems", "1")

    # A request to an address the outbound guard refuses, typed into a new step's panel.
    drop_kind(page, '[data-palette-kind="http_request"]', 420, 420)
    panel_of(page, "http_request").get_by_label("URL").fill(GUARDED)
    expect(page.locator("#problems-toggle")).to_have_text("2 problems", timeout=LIVE_TIMEOUT_MS)
    page.locator("#problems-toggle").click()
    listed = page.locator("#problems-list")
    expect(listed).to_contain_text("reads steps.charge, but there is no step 'charge'")
    expect(listed).to_contain_text("the outbound guard will refuse 10.20.30.40")
    expect(listed).to_contain_text("SIGNALBOX_OUTBOUND_ALLOW")
    expect(node(page, "http_request")).to_have_attribute("data-problems", "1")
    screenshot(page, "editor-problems")

    # Publishing is refused, saying why; the live version stays.
    page.locator("#problems-toggle").click()
    page.locator('[data-panel="publish"]').click()
    page.get_by_role("button", name="Publish the draft").click()
    refused = page.locator("#publish-refused")
    expect(refused).to_contain_text("2 problems")
    expect(refused).to_contain_text("SIGNALBOX_OUTBOUND_ALLOW")
    expect(page.locator("#editor-version")).to_have_text("live: v1")
    assert api.get("/api/v1/workflows/preflight").json()["published_version"] == 1


@pytest.mark.browser
def test_a_node_dragged_off_the_palette_onto_a_node_lands_beside_it(page: Page, make_user, api):
    publish(api, "beside", definition(log_step("first")))
    open_editor(page, make_user, "beside")
    first = node(page, "first")
    box = first.bounding_box()
    drag_to(
        page,
        page.locator('[data-palette-kind="log"]'),
        box["x"] + box["width"] / 2,
        box["y"] + box["height"] / 2,
    )
    expect(node(page, "log")).to_have_count(1)
    assert not overlap(as_box(node(page, "log").bounding_box()), as_box(box))
