"""The base of the dashboard's live sockets (PushConsumer).

- Connect: a session user with the viewer role (else closed 4401/4403), whose permission on
  the subscription is checked (another team's workflow, run, event or batch: 4404, as a
  missing one, so that the close code does not reveal it exists). The page then gets a
  snapshot of what it shows now, and on every reconnect again.
- A socket has no channel of its own: hints come from the process's Hub (live_hub.py).
- Coalescing is adaptive: an idle page is rendered at once (on the next turn of the loop, so
  the hints that came in the same read are one render). While a render of its page is in
  flight, further hints only mark it dirty: one more render follows when the frame is out,
  no sooner than `interval` after it (a few ms for a run's page, a quarter second for the
  run list; the overview, flow and lineage keep their longer gaps). A page that stays busy
  frame after frame (load) waits as long as its last render and send took, so pushing
  never takes more than about half of the process.
- Flow control: a page that connects with `ack=1` acknowledges every frame with
  {"ack": <frames received>}. While WINDOW frames are unacknowledged nothing more is sent;
  changes meanwhile collapse into one render of the latest state, sent when the page
  catches up. A slow browser gets fewer, fresher frames, never an unbounded queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from dashboard.live import push_timing
from dashboard.live.frame_writer import direct_writer
from dashboard.live.hub import frame_sender, hub
from workflows.access.roles import has_role
from workflows.queries import dashboard as ds

log = logging.getLogger("signalbox.live")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
# Another team's object closes as a missing one does: 4403 would reveal that it exists.
CLOSE_NOT_FOUND = 4404
# Least gap between two frames of one busy page (an idle page is served at once).
COALESCE_SECONDS = 0.005
WINDOW = 2  # unacknowledged frames allowed in ack mode


# --- the socket base -------------------------------------------------------------------------
class PushConsumer(AsyncWebsocketConsumer):
    hint_types: tuple[str, ...] = ("run.changed",)
    # Least gap between two frames while busy; an idle page is served at once.
    interval = COALESCE_SECONDS
    # Re-render this often even without hints (gauges that change without telling: queue
    # depth, lag, workers); None: only on hints.
    refresh_seconds: float | None = None
    # A page served back to back this many times in a row is under load: it then waits as
    # long as its last render and send took.
    BUSY_STREAK = 2
    committed_at: float | None = None  # see push_timing.py
    hinted_at: float = 0.0

    async def __call__(self, scope, receive, send):
        # A plain loop over the socket's own messages. Hints come through the Hub, so a
        # socket needs no channel of its own: channels would give each one a channel-layer
        # receive and every message (each page acknowledges every frame) a new task and an
        # asyncio.wait; with 500 pages that was a third of the process's time per frame.
        self.scope = scope
        self.channel_layer = None
        self.channel_name = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def connect(self):
        self.closed = False
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.params = {
            k: v[-1] for k, v in parse_qs(self.scope.get("query_string", b"").decode()).items()
        }
        self.ack_mode = self.params.get("ack") == "1"
        self.sent = self.acked = 0
        self.dirty = False
        # Waiting for, or in, a render and send. Until the snapshot is out hints only mark
        # the page dirty, so no frame overtakes the snapshot.
        self.scheduled = True
        self.next_at = 0.0  # monotonic: no frame before this while busy
        self.streak = 0
        self.hint_at = time.monotonic()
        # Commit time of the oldest hint not served yet (push_timing.py; only when on).
        self.committed_at: float | None = None
        self.last_frame: str | None = None
        self._serve_key: Any = None
        self.write = None  # frame_writer.direct_writer, once accepted
        self._ticker: asyncio.Task | None = None
        self._joined = False
        refusal = await database_sync_to_async(self._authorize)(user)
        if refusal:
            await self.close(code=refusal)
            return
        await hub().join(self)
        self._joined = True
        for group in self.extra_groups():
            await hub().add_group(group)
        await self.accept()
        self._send_frame = frame_sender(self.base_send)
        self.write = direct_writer(self._send_frame)
        self.dirty = False  # the snapshot's render starts after every hint so far
        try:
            await self.push(snapshot=True)
        finally:
            self.scheduled = False
            if self.dirty:
                self.schedule()
        if self.refresh_seconds:
            self._ticker = asyncio.ensure_future(self._tick())

    def _authorize(self, user) -> int | None:
        if not has_role(user, "viewer"):
            return CLOSE_FORBIDDEN
        self.hidden = ds.hidden_workflow_ids(user)
        self.hidden_names = ds.hidden_slugs(self.hidden)
        return self.authorize(user)

    def authorize(self, user) -> int | None:
        """A close code when this user may not follow this subscription (database thread)."""
        return None

    def extra_groups(self) -> list[str]:
        """Groups beyond the hub's own that carry hints for this socket."""
        return []

    async def disconnect(self, code):
        self.closed = True  # the hub drops it from its queues and timers
        if getattr(self, "_ticker", None):
            self._ticker.cancel()
        if getattr(self, "_joined", False):
            for group in self.extra_groups():
                await hub().remove_group(group)
            await hub().leave(self)

    async def dispatch(self, message):
        # Channels closes stale database connections before every message it dispatches:
        # a hop to the database thread (where renders run) and back. A page acknowledges
        # every frame, so with 500 pages that was 500 hops queued in front of the next
        # render, per frame. Past connect nothing here touches the database outside
        # database_sync_to_async, which closes stale connections around each call anyway.
        if message["type"] == "websocket.connect":
            await super().dispatch(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def receive(self, text_data=None, bytes_data=None):
        try:
            message = json.loads(text_data or "{}")
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "ack" in message and isinstance(message["ack"], int):
            self.acked = max(self.acked, min(message["ack"], self.sent))
            if self.dirty:
                self.schedule(0)
        await self.command(message)

    async def command(self, message: dict) -> None:
        """Page -> server messages beyond acknowledgements (pause, resume…)."""

    # hints
    def hint(self, message: dict) -> None:
        if message.get("type", "").replace("_", ".") not in self.hint_types:
            return
        if not self.concerns(message):
            return
        self.hint_at = time.monotonic()
        self.dirty = True
        if push_timing.ENABLED and self.committed_at is None and message.get("at"):
            self.committed_at = message["at"]
            self.hinted_at = time.time()
        self.schedule()

    def resync(self) -> None:
        self.hint_at = time.monotonic()
        self.dirty = True
        self.schedule()

    def concerns(self, message: dict) -> bool:
        return True

    def window_full(self) -> bool:
        return self.ack_mode and self.sent - self.acked >= WINDOW

    def schedule(self, delay: float | None = None) -> None:
        """Ask the hub for a frame: now when idle, after the gap when busy. A page already
        waiting for (or in) a render is not asked twice: its dirty flag brings the next."""
        if self.scheduled or self.closed:
            return
        now = time.monotonic()
        when = self.next_at if delay is None else now + delay
        self.scheduled = True
        if when <= now:
            hub().enqueue(self)
        else:
            hub().enqueue_at(self, when)

    # what the hub renders
    def share(self) -> tuple[Any, Callable[[], Any]] | None:
        """(key, compute) when this page shows the same as every page with that key:
        compute() runs once in the Hub's render thread for all of them and `frame_of` turns its
        result into this page's frame. None: the page renders alone (`render`)."""
        return None

    def frame_of(self, result: Any) -> str | None:
        return result

    def serve_key(self) -> Any:
        # What a page shows is fixed when it connects (filters, visibility): asked once.
        if self._serve_key is None:
            shared = self.share()
            self._serve_key = ("shared", shared[0]) if shared else ("own", id(self))
        return self._serve_key

    async def render_for(self, pages: list[PushConsumer], fresh_after: float) -> Any:
        """One render for `pages` (all with this page's serve key)."""
        shared = self.share()
        if shared is None:
            return await self.render(snapshot=False, fresh_after=fresh_after)
        key, compute = shared
        return await hub().shared(key, fresh_after, compute)

    async def deliver(self, message: dict, started: float) -> None:
        """Send `message` ({"type": "websocket.send", "text": frame}, one dict for all the
        pages of a render) unless this page has that frame already."""
        frame = message["text"]
        try:
            if frame is not None and frame != self.last_frame and not self.closed:
                self.last_frame = frame
                self.sent += 1
                await self._send_frame(message)
        except Exception:  # keep the socket; the next hint retries
            log.exception("send failed")
            self.frame_lost()
        finally:
            self.delivered(started)

    def deliver_encoded(self, frame: str, wire: bytes, started: float) -> bool:
        """deliver() without a coroutine: `wire` (`frame` encoded, frame_writer.encoded)
        written straight to the socket. False when the socket cannot take it now (nothing
        done: deliver() sends it through the server)."""
        if frame != self.last_frame and not self.closed:
            try:
                if not self.write(wire):
                    return False
            except Exception:  # the server's own send will say what is wrong
                log.debug("direct write failed", exc_info=True)
                return False
            self.last_frame = frame
            self.sent += 1
        self.delivered(started)
        return True

    def delivered(self, started: float) -> None:
        """A frame is out (or was not needed): the gap before this page's next one."""
        now = time.monotonic()
        self.streak = self.streak + 1 if self.dirty else 0
        gap = self.interval
        if self.streak >= self.BUSY_STREAK:
            gap = max(gap, now - started)
        self.next_at = now + gap
        self.scheduled = False
        if self.dirty:
            self.schedule()

    def frame_lost(self) -> None:
        """A send failed: what the page shows is unknown, so its next frame is whole."""
        self.last_frame = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            self.resync()

    async def push(self, *, snapshot: bool = False) -> None:
        frame = await self.render(snapshot=snapshot, fresh_after=self.hint_at)
        if frame is None or (frame == self.last_frame and not snapshot):
            return
        self.last_frame = frame
        self.sent += 1
        await self.send(text_data=frame)

    async def render(self, *, snapshot: bool, fresh_after: float) -> str | None:
        shared = self.share()
        if shared is None:
            raise NotImplementedError
        key, compute = shared
        return self.frame_of(await hub().shared(key, fresh_after, compute))
