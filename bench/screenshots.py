"""`make screenshots`: redraw the README's pictures of the dashboard from a throwaway stack.

Starts the stack the benchmarks use (bench/stack.py: a new PostgreSQL database, its own
redis-server, every process as `make run` starts them), seeds it as `make run` does
(`manage.py bootstrap`: an admin and the demo workflows of workflows/demo/), sends the demo
workflows a few events over the API (runs that succeed, one that fails after its retries, one
still running), signs in through the login form and saves each page with headless Chromium
at a fixed viewport. Every wait is on a condition of the page or the API, never a fixed sleep.

    make screenshots                         # every picture below, into docs/screenshots/
    .venv/bin/python -m bench.screenshots --only runs run --out /tmp/shots

It writes only the files named in SHOTS; the other pictures in docs/screenshots/ are drawn by
the browser tests (`SIGNALBOX_SCREENSHOTS=docs/screenshots`, see docs/replay.md).
"""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from bench.stack import ROOT, Stack
from tests.browser.conftest import CHROMIUM_ARGS
from tests.services import ensure_chromium
from tests.waiting import wait_until

SHOTS = ("runs", "run", "editor", "flow-map", "phone-menu")
DESKTOP = {"width": 1280, "height": 800}
TALL = {"width": 1280, "height": 1000}
EDITOR = {"width": 1600, "height": 900}
PHONE = {"width": 390, "height": 844}
PASSWORD = "screenshots only, a throwaway stack"
CE_JSON = {"Content-Type": "application/cloudevents+json"}
# Live pages update over a WebSocket after Celery work: generous on a busy machine.
LIVE_MS = 60_000


@dataclass
class Runs:
    """The runs the pictures show, by id, and the API client that made them."""

    api: httpx.Client
    failed: int
    running: int
    settled: int


def event(type_: str, source: str, data: dict) -> dict:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "subject": f"order-{data['order']}",
        "datacontenttype": "application/json",
        "data": data,
    }


def send(api: httpx.Client, body: dict) -> int:
    response = api.post("/api/v1/events", json=body, headers=CE_JSON)
    if response.status_code != 202:
        raise RuntimeError(f"the event was refused: {response.status_code} {response.text}")
    return response.json()["id"]


def run_of(api: httpx.Client, slug: str, event_id: int, *, status: str | None = None) -> dict:
    """The run `event_id` started in workflow `slug`, once it exists (and has `status`)."""

    def found():
        runs = api.get("/api/v1/runs", params={"workflow": slug}).json()["runs"]
        run = next((r for r in runs if r["event"] == event_id), None)
        return run if run and (status is None or run["status"] == status) else None

    return wait_until(found, timeout=90, interval=0.2, message=f"a {status or ''} run of {slug}")


def payment(order: int, amount: float, card: str = "visa") -> dict:
    data = {"order": order, "amount": amount, "currency": "EUR", "card": card}
    return event("com.example.payment.requested", "/demo/checkout", data)


def order(number: int, customer: str, items: int) -> dict:
    data = {"order": number, "items": items, "customer": customer}
    return event("com.example.order.placed", "/demo/shop", data)


def make_runs(stack: Stack, api: httpx.Client) -> Runs:
    """Runs of the demo workflows: orders and a payment that succeed (the payment starts a
    shipping run), a payment declined after its three attempts, and one still running."""
    for number, customer, items in ((1041, "ada", 2), (1042, "grace", 1), (1043, "linus", 4)):
        placed = send(api, order(number, customer, items))
        run_of(api, "demo-order-placed", placed, status="succeeded")
    settled = run_of(api, "demo-payments", send(api, payment(1044, 42.5)), status="succeeded")
    run_of(api, "demo-shipping", wait_until(lambda: shipping_event(api), message="shipping"))
    failed = run_of(api, "demo-payments", send(api, payment(1045, 950.0, "amex")), status="failed")
    run_of(api, "demo-order-placed", send(api, order(1046, "margaret", 3)), status="succeeded")
    # The last payment is declined too, but its retry is 2 s away and the scheduler enqueues
    # retries that come due: with the scheduler stopped it stays running for the pictures.
    stack.stop_processes("scheduler")
    running_event = send(api, payment(1047, 1200.0, "mastercard"))

    def retry_pending():
        run = run_of(api, "demo-payments", running_event)
        # The API lists each step's latest attempt: a second one means the first declined.
        retrying = any(s["id"] == "gateway" and s["attempt"] >= 2 for s in run["steps"])
        return run if run["status"] == "running" and retrying else None

    running = wait_until(retry_pending, timeout=90, interval=0.2, message="a retry to wait")
    return Runs(api, failed=failed["id"], running=running["id"], settled=settled["id"])


def shipping_event(api: httpx.Client) -> int | None:
    runs = api.get("/api/v1/runs", params={"workflow": "demo-shipping"}).json()["runs"]
    return runs[0]["event"] if runs else None


def log_in(page: Page) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/runs/$"))


def wait_for_live(page: Page, indicator: str = "#live-indicator") -> None:
    expect(page.locator(indicator)).to_have_attribute("data-state", "open", timeout=LIVE_MS)


def shoot_runs(page: Page, runs: Runs, out: Path) -> None:
    page.set_viewport_size(DESKTOP)
    page.goto("/runs/")
    wait_for_live(page)
    expect(page.locator(f'#run-{runs.failed}[data-status="failed"]')).to_be_visible()
    expect(page.locator(f'#run-{runs.running}[data-status="running"]')).to_be_visible()
    page.screenshot(path=out / "runs.png")


def shoot_run(page: Page, runs: Runs, out: Path) -> None:
    page.set_viewport_size(DESKTOP)
    page.goto(f"/runs/{runs.failed}/")
    wait_for_live(page)
    expect(page.locator("#run-detail")).to_contain_text("declined", timeout=LIVE_MS)
    # Down to the steps table (each step's status, attempt, output or error); the attempts'
    # details below it would make the picture three screens tall.
    details = page.get_by_role("heading", name="Step details").bounding_box()
    clip = {"x": 0, "y": 0, "width": DESKTOP["width"], "height": details["y"] - 8}
    page.screenshot(path=out / "run.png", full_page=True, clip=clip)


def shoot_editor(page: Page, runs: Runs, out: Path) -> None:
    page.set_viewport_size(EDITOR)
    page.goto("/workflows/demo-payments/edit/")
    wait_for_live(page, "#editor-live")
    page.locator('[data-panel="runs"]').click()
    # The demo workflows carry no positions: lay them out as a person would, one click.
    page.get_by_role("button", name="Auto-layout").click()
    wait_until(lambda: apart(page, "check", "charge"), timeout=30, message="the layout")
    page.get_by_role("button", name="Fit").click()
    expect(page.locator("#save-status")).to_have_attribute("data-state", "saved", timeout=LIVE_MS)
    page.locator(f'.run-pick[data-run="{runs.failed}"]').click()
    expect(page.locator("#run-banner-status")).to_have_text("failed", timeout=LIVE_MS)
    gateway = page.locator('.drawflow-node[data-step="gateway"]')
    expect(gateway).to_have_attribute("data-run-status", "failed", timeout=LIVE_MS)
    page.screenshot(path=out / "editor.png")


def apart(page: Page, one: str, other: str) -> bool:
    """True when the two steps' nodes do not overlap on the canvas."""
    a, b = (page.locator(f'.drawflow-node[data-step="{s}"]').bounding_box() for s in (one, other))
    if not (a and b):
        return False
    side_by_side = a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
    stacked = a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]
    return side_by_side or stacked


def shoot_flow_map(page: Page, runs: Runs, out: Path) -> None:
    page.set_viewport_size(TALL)
    page.goto("/flow/")
    wait_for_live(page)
    # The table lists what arrives while the page is open: two more orders for it.
    for number, customer in ((1048, "ken"), (1049, "ada")):
        send(runs.api, order(number, customer, 1))
    expect(page.locator("#flow-rows tr.flow-row")).not_to_have_count(0, timeout=LIVE_MS)
    failing = page.locator(
        '#flow-map a.flow-edge[data-from="type:com.example.payment.requested"]'
        '[data-to="workflow:demo-payments"]'
    )
    expect(failing).to_have_attribute("data-failed", "1", timeout=LIVE_MS)
    page.screenshot(path=out / "flow-map.png")


def shoot_phone_menu(page: Page, runs: Runs, out: Path) -> None:
    page.set_viewport_size(PHONE)
    page.goto("/runs/")
    wait_for_live(page)
    menu = page.get_by_role("button", name="Menu")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#site-nav")).to_be_visible()
    page.screenshot(path=out / "phone-menu.png")


SHOOT = {
    "runs": shoot_runs,
    "run": shoot_run,
    "editor": shoot_editor,
    "flow-map": shoot_flow_map,
    "phone-menu": shoot_phone_menu,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--only", nargs="+", choices=SHOTS, default=list(SHOTS))
    args = parser.parse_args()
    chromium = ensure_chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    stack = Stack(f"shots{uuid.uuid4().hex[:8]}", None)
    try:
        stack.start()
        stack.env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
        stack.manage("bootstrap")  # the admin and the demo workflows, as `make run` does
        headers = {"Authorization": f"Bearer {stack.token}"}
        with (
            httpx.Client(base_url=stack.base_url, headers=headers, timeout=15) as api,
            sync_playwright() as playwright,
        ):
            runs = make_runs(stack, api)
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page(base_url=stack.base_url, viewport=DESKTOP)
                log_in(page)
                for name in args.only:
                    SHOOT[name](page, runs, args.out)
                    print(f"wrote {args.out / (name + '.png')}", flush=True)
            finally:
                browser.close()
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
