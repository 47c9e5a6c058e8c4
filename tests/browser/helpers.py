"""What browser tests do on a page, and a loopback endpoint that holds a step mid-flight."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import Page, expect

# Pages update over a WebSocket after Celery work: give them time on a busy 2-core machine.
LIVE_TIMEOUT_MS = 30_000
PASSWORD = "correct horse battery staple"


def log_in(page: Page, username: str, *, landing_path: str = "/runs/") -> None:
    """Sign in through the real login form and wait until we land on `landing_path`."""
    page.goto("/login/")
    submit_login_form(page, username)
    expect(page).to_have_url(re.compile(re.escape(landing_path) + "$"))


def submit_login_form(page: Page, username: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def wait_for_live(page: Page) -> None:
    """Wait until the page's WebSocket is open (the indicator follows htmx:wsOpen)."""
    expect(page.locator("#live-indicator")).to_have_attribute(
        "data-state", "open", timeout=LIVE_TIMEOUT_MS
    )


def set_marker(page: Page) -> None:
    page.evaluate("window.__marker = 1")


def marker_survived(page: Page) -> bool:
    """True while the document is the one we marked: no reload or navigation happened."""
    return page.evaluate("window.__marker") == 1


class Gate:
    """A loopback HTTP endpoint that holds every request until released, then answers
    `status`. Lets a test look at a run while its step is still running."""

    def __init__(self, status: int = 400) -> None:
        self.status = status
        self.arrived = threading.Event()
        self.released = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                gate.arrived.set()
                gate.released.wait(120)
                body = b'{"error": "refused by the gate"}'
                self.send_response(gate.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def hold(self, status: int) -> None:
        """Hold the next requests again, and answer them `status` once released."""
        self.status = status
        self.arrived.clear()
        self.released.clear()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
