"""Tell connected browsers that something changed, after the change is committed.

Messages are small hints ({"type": "run.changed", "run": id, "seq": n}); consumers re-read
the database, so a lost hint costs freshness, never correctness.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from django.db import transaction

from .services.producers import emitting_workflow

log = logging.getLogger("signalbox.notify")

RUNS_GROUP = "runs"


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


def run_changed(*, run_id: int, seq: int, workflow_slug: str, status: str) -> None:
    message = {
        "type": "run.changed",
        "run": run_id,
        "seq": seq,
        "workflow_slug": workflow_slug,
        "status": status,
    }
    transaction.on_commit(lambda: _send([RUNS_GROUP, run_group(run_id)], message))


EVENTS_GROUP = "events"


def event_ingested(*, event) -> None:
    """A new event is in the store (sent after its transaction commits)."""
    message = {"type": "event.ingested", **_ingested(event)}
    transaction.on_commit(lambda: _send([EVENTS_GROUP], message))


def events_ingested(*, events) -> None:
    """Many new events in one hint, for a caller that just committed them together (the
    ingest group committer): one Redis round trip, not one per event. The Hub hands each
    socket one `event.ingested` hint per event."""
    if events:
        _send([EVENTS_GROUP], {"type": "events.ingested", "events": [_ingested(e) for e in events]})


def _ingested(event) -> dict:
    # What the live event flow filters on, so a socket can drop it without reading the
    # database.
    return {
        "event": event.pk,
        "event_type": event.type,
        "source": event.source,
        "correlation": event.correlation_id,
        "channel": event.channel,
        # Whose it is (None for an outside event), so a socket of someone outside the
        # workflow's team drops the hint (the frames themselves are read through
        # event_selectors.visible_events).
        "workflow": emitting_workflow(event),
    }


def replay_batch_group(batch_id: int) -> str:
    return f"replay-batch-{batch_id}"


def replay_batch_changed(*, batch_id: int, done: int, failed: int, status: str) -> None:
    message = {
        "type": "batch.changed",
        "batch": batch_id,
        "done": done,
        "failed": failed,
        "status": status,
    }
    transaction.on_commit(lambda: _send([replay_batch_group(batch_id)], message))


def draft_group(workflow_id: int) -> str:
    return f"workflow-{workflow_id}-draft"


def draft_changed(*, workflow_id: int, revision: int, by: str, at: str, client: str = "") -> None:
    """A workflow's draft was saved (open editors warn before anyone overwrites it).
    `client` names the editor page that saved it, so that page can tell its own save."""
    message = {
        "type": "draft.changed",
        "workflow": workflow_id,
        "revision": revision,
        "by": by,
        "at": at,
        "client": client,
    }
    transaction.on_commit(lambda: _send([draft_group(workflow_id)], message))


class _Pusher:
    """Sends hints from one long-lived event loop per process, in order.

    `async_to_sync(group_send)` would start a new loop, and with it a new Redis connection,
    for every hint: the largest cost of a light step. Here hints go through a bounded queue
    to one loop thread that keeps its connections; when the queue is full hints are dropped
    (they are only hints: pages re-read the database on their next snapshot)."""

    MAX_PENDING = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._pid: int | None = None
        self._drainer: asyncio.Task | None = None

    def submit(self, groups: list[str], message: dict) -> None:
        loop = self._ensure_loop()
        loop.call_soon_threadsafe(self._enqueue, groups, message)

    def _enqueue(self, groups: list[str], message: dict) -> None:
        try:
            self._queue.put_nowait((groups, message))
        except asyncio.QueueFull:
            log.warning("push queue full; dropping a %s hint", message.get("type"))

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        # A forked child (Celery prefork) must not reuse its parent's loop thread.
        if self._loop is not None and self._pid == os.getpid():
            return self._loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    self._queue = asyncio.Queue(maxsize=self.MAX_PENDING)
                    self._drainer = loop.create_task(self._drain())  # keep a reference
                    ready.set()
                    loop.run_forever()

                threading.Thread(target=run, name="signalbox-push", daemon=True).start()
                ready.wait(5)
                self._loop, self._pid = loop, os.getpid()
        return self._loop

    async def _drain(self) -> None:
        # A layer of our own: the process's shared one may be in use on another loop (an
        # ASGI server, or tests), and channels_redis binds its locks to one loop.
        layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        while True:
            groups, message = await self._queue.get()
            try:
                for group in groups:
                    await layer.group_send(group, message)
            except Exception as exc:  # noqa: BLE001 - a missed hint must never fail anything
                log.warning("could not push %s: %s", message["type"], exc)


_pusher = _Pusher()


def _send(groups: list[str], message: dict) -> None:
    _pusher.submit(groups, message)
