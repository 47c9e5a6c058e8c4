"""Helpers for the durability tests: a loopback HTTP server that holds requests until the
test opens it, runs started in this process, and what the stack's processes did (their
attempts, journal, Celery messages in Redis, worker log).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import redis
from django.conf import settings

from tests.factories import definition
from tests.waiting import wait_until
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.core import engine
from workflows.runs import advance as runs
from workflows.runs.models import Run, RunJournal, StepRun

FINISHED = ("succeeded", "failed", "cancelled")


class Gate:
    """A loopback HTTP server that records every request and holds the first `hold` of
    them until the test opens the gate, so the test knows a step is mid-request."""

    def __init__(self, hold: int = 0) -> None:
        self.requests: list[dict[str, str]] = []
        self.hold = hold
        self.opened = threading.Event()
        self.lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with gate.lock:
                    gate.requests.append(dict(self.headers.items()))
                    held = len(gate.requests) <= gate.hold
                if held:
                    gate.opened.wait(120)
                payload = json.dumps({"ok": True}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the caller died while we held it

            do_GET = do_PUT = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/gate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        with self.lock:
            return [headers.get("Idempotency-Key", "") for headers in self.requests]

    def close(self) -> None:
        self.opened.set()
        self.server.shutdown()
        self.server.server_close()


def start_run_here(slug: str, *steps: dict) -> Run:
    """Publish a workflow and start a run of it in this process (no event, no bus)."""
    put_workflow(slug=slug, raw=definition(*steps, event=f"com.example.{slug}"))
    version = publish_workflow(slug=slug)
    run = Run.objects.create(workflow=version.workflow, version=version)
    runs.advance_run(run_id=run.pk, happening=engine.RunStarted())
    return run


def attempt(run_id: int, step_id: str, number: int = 1) -> StepRun | None:
    return StepRun.objects.filter(run_id=run_id, step_id=step_id, attempt=number).first()


def status_of(run_id: int, step_id: str, number: int = 1) -> str:
    return getattr(attempt(run_id, step_id, number), "status", "")


def run_of(event_id: int) -> Run:
    return wait_until(
        lambda: Run.objects.filter(event_id=event_id).first(),
        timeout=60,
        message=f"a run of event {event_id}",
    )


def finished(run_id: int, timeout: float = 60) -> Run:
    return wait_until(
        lambda: Run.objects.filter(pk=run_id, status__in=FINISHED).first(),
        timeout=timeout,
        message=f"run {run_id} to finish",
    )


def journal_kinds(run_id: int) -> list[tuple[str, str, int]]:
    return [
        (e.kind, e.data.get("step", ""), e.data.get("attempt", 0))
        for e in RunJournal.objects.filter(run_id=run_id).order_by("seq")
    ]


def celery_messages_in_redis() -> int:
    """Messages waiting in our Celery queues, or taken by a worker and not yet acknowledged
    (where a task sent with an ETA would sit until its time)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
    try:
        count = 0
        for key in client.scan_iter(match=f"{prefix}*"):
            kind = client.type(key)
            if kind == b"list":
                count += client.llen(key)
            elif kind == b"hash" and key.endswith(b"unacked"):
                count += client.hlen(key)
        return count
    finally:
        client.close()


def pool_process_calling(stack, port: int) -> psutil.Process | None:
    """The Celery pool process with a connection open to loopback `port`."""
    for child in psutil.Process(stack.processes["worker"].pid).children(recursive=True):
        try:
            if any(c.raddr and c.raddr.port == port for c in child.net_connections("tcp")):
                return child
        except psutil.Error:
            continue
    return None


def worker_log(stack) -> str:
    return stack.log_tail("worker", lines=1_000_000)
