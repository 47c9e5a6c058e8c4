"""The dashboard's WebSockets: runs, one run, the overview, the live event flow, an event's
lineage and the workers page.

How a socket works
- Connect: a session user with the viewer role (else closed 4401/4403), whose permission on
  the subscription is checked (another team's workflow, run, event or batch: 4404, as a
  missing one, so that the close code does not reveal it exists). The page then gets a
  snapshot of what it shows now, and on every reconnect again; the event flow resumes from
  the last event id the page saw (`after=`), so nothing is missed across a network drop.
- Hints: services send small hints after commit (workflows/notify.py). Each web process
  listens to the "runs" and "events" groups once (the Hub) and hands each hint to the
  interested sockets (indexed by hint type) by a function call; a socket marks itself dirty.
  A socket has no channel of its own (groups it needs beyond those, a run's or a replay
  batch's, the Hub joins for it).
- Coalescing is adaptive: an idle page is rendered at once (on the next turn of the loop, so
  the hints that came in the same read are one render). While a render of its page is in
  flight, further hints only mark it dirty: one more render follows when the frame is out,
  no sooner than `interval` after it (a few ms for runs; the overview, flow and lineage keep
  their longer gaps). A page that stays busy frame after frame (load) waits as long as its
  last render and send took, so pushing never takes more than about half of the process.
- Sharing: pages that show the same thing to the same visibility are served together by
  the Hub: one render in the database thread, the same frame string handed to every page.
  A render is only used for a page if it started after the page's last hint, so a page
  never shows a state older than a hint it was given. The run list sends a page only what
  changed since its last frame (run_list_frames.py), and a frame is encoded once and
  written as the same bytes to every socket that can take them (frame_writer.py).
- Flow control: a page that connects with `ack=1` acknowledges every frame with
  {"ack": <frames received>}. While WINDOW frames are unacknowledged nothing more is sent;
  changes meanwhile collapse into one render of the latest state, sent when the page
  catches up. A slow browser gets fewer, fresher frames, never an unbounded queue.

Frames are HTML fragments whose top-level elements carry ids (and hx-swap-oob); the page
swaps each into the element with the same id (static/js/dashboard-live.js).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import types
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels import DEFAULT_CHANNEL_LAYER
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import channel_layers
from channels.sessions import InstanceSessionWrapper
from django.db import connections
from django.template.loader import render_to_string

from workflows import dashboard_selectors as ds
from workflows import event_selectors as store
from workflows import notify
from workflows.models import Event, Run, TriggerSubscription
from workflows.roles import has_role
from workflows.selectors import SHADOW

from . import metrics
from .frame_writer import direct_writer, encoded
from .run_list_frames import RunRows, row_html

log = logging.getLogger("signalbox.live")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
# Another team's object closes as a missing one does: 4403 would reveal that it exists.
CLOSE_NOT_FOUND = 4404
# Least gap between two frames of one busy page (an idle page is served at once).
COALESCE_SECONDS = 0.005
WINDOW = 2  # unacknowledged frames allowed in ack mode
HUB_GROUPS = (notify.RUNS_GROUP, notify.EVENTS_GROUP)
HUB_REJOIN_SECONDS = 3600  # channel layer groups expire after a day; rejoin well before
RENDER_KEEP_SECONDS = 30.0


# --- one subscription per process ------------------------------------------------------------
class Hub:
    """Receives the dashboard groups once per process (per event loop) and fans hints out
    to this process's sockets; also holds the shared renders."""

    def __init__(self) -> None:
        self.listeners: set[PushConsumer] = set()
        # hint type -> the sockets that want it: a hint nobody wants costs one lookup, not
        # one call per socket (200 events/s x 500 pages would be 100,000 calls a second).
        self.by_type: dict[str, set[PushConsumer]] = {}
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.renders: dict[Any, tuple[float, asyncio.Future]] = {}
        self.received = 0
        self.extra: dict[str, int] = {}
        self._joining: asyncio.Lock | None = None
        # Pages due for a frame, served together on the next turn of the loop.
        self.due: list[PushConsumer] = []
        self._pump_scheduled = False
        # share key -> pages waiting for the next render of that key; a key is present
        # while a task serves it (one render of a key in flight at a time).
        self.serving: dict[Any, list[PushConsumer]] = {}
        self.frames_rendered = 0
        self.tasks: set[asyncio.Task] = set()
        # Busy pages waiting out their gap, by deadline (ms): one timer per deadline, not
        # one per page.
        self.later: dict[int, list[PushConsumer]] = {}
        self._layer = None

    @property
    def layer(self):
        """A channel layer of this Hub's own (a Hub is per event loop): channels_redis binds
        its receive lock to the loop that first waits on it, so a layer shared with other
        loops (the process's default one, which other consumers use) would be left unusable
        by a listener cut off with its loop, as tests that each run their own loop do."""
        if self._layer is None:
            self._layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        return self._layer

    async def join(self, consumer: PushConsumer) -> None:
        """Subscribe `consumer`; returns once the process is in the groups, so a snapshot
        read after this misses no change."""
        self._joining = self._joining or asyncio.Lock()
        async with self._joining:
            self.listeners.add(consumer)
            for kind in consumer.hint_types:
                self.by_type.setdefault(kind, set()).add(consumer)
            if self.task is None or self.task.done():
                layer = self.layer
                # The default prefix: channels_redis reads every process-local channel
                # through one Redis key, that of "specific." channels.
                self.channel = await layer.new_channel()
                for group in HUB_GROUPS:
                    await layer.group_add(group, self.channel)
                self.task = asyncio.ensure_future(self._listen(layer, self.channel))

    async def add_group(self, group: str) -> None:
        """Also listen to `group` (e.g. one run's group), counted per socket."""
        self.extra[group] = self.extra.get(group, 0) + 1
        if self.extra[group] == 1 and self.channel:
            await self.layer.group_add(group, self.channel)

    async def remove_group(self, group: str) -> None:
        self.extra[group] = self.extra.get(group, 1) - 1
        if self.extra[group] <= 0:
            del self.extra[group]
            if self.channel:
                await self.layer.group_discard(group, self.channel)

    async def leave(self, consumer: PushConsumer) -> None:
        self.listeners.discard(consumer)
        for kind in consumer.hint_types:
            self.by_type.get(kind, set()).discard(consumer)
        if self.listeners or self.task is None:
            return
        task, channel, self.task, self.channel = self.task, self.channel, None, None
        task.cancel()
        # Wait for it to unwind: a receive cut off with its loop would keep the layer's
        # receive lock, bound to a loop that is gone, and the next loop could not receive.
        await asyncio.gather(task, return_exceptions=True)
        layer = self.layer
        for group in HUB_GROUPS:
            try:
                await layer.group_discard(group, channel)
            except Exception as exc:  # noqa: BLE001 - it expires by itself
                log.debug("could not leave %s: %s", group, exc)
        self.renders.clear()

    async def _listen(self, layer, channel: str) -> None:
        joined = time.monotonic()
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: hints were lost
                log.warning("dashboard hints interrupted: %s", exc)
                await asyncio.sleep(1.0)
                for consumer in list(self.listeners):
                    consumer.resync()
                continue
            self.received += 1
            for hint in unpacked(message):
                kind = str(hint.get("type", "")).replace("_", ".")
                for consumer in list(self.by_type.get(kind, ())):
                    try:
                        consumer.hint(hint)
                    except Exception:  # one broken socket must not starve the others
                        log.exception("socket hint failed")
            if time.monotonic() - joined > HUB_REJOIN_SECONDS:
                joined = time.monotonic()
                for group in HUB_GROUPS:
                    await layer.group_add(group, channel)

    async def shared(self, key: Any, fresh_after: float, compute: Callable[[], Any]) -> Any:
        """compute() in the database thread, or the result of a computation of the same key
        that started at or after `fresh_after`."""
        entry = self.renders.get(key)
        if entry is not None and entry[0] >= fresh_after:
            return await asyncio.shield(entry[1])
        started = time.monotonic()
        future = asyncio.ensure_future(database_sync_to_async(compute)())
        self.renders[key] = (started, future)
        if len(self.renders) > 256:
            cutoff = started - RENDER_KEEP_SECONDS
            for stale in [k for k, (t, f) in self.renders.items() if t < cutoff and f.done()]:
                del self.renders[stale]
        return await asyncio.shield(future)

    # serving pages: the fan-out
    def enqueue(self, consumer: PushConsumer) -> None:
        """`consumer` is due for a frame: serve it on the next turn of the loop, together
        with every page that becomes due before then."""
        self.due.append(consumer)
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def enqueue_at(self, consumer: PushConsumer, when: float) -> None:
        """`consumer` is due at monotonic time `when` (rounded up to the millisecond)."""
        slot = int(when * 1000) + 1
        waiting = self.later.get(slot)
        if waiting is None:
            waiting = self.later[slot] = []
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + max(0.0, slot / 1000 - time.monotonic()), self._at, slot)
        waiting.append(consumer)

    def _at(self, slot: int) -> None:
        for consumer in self.later.pop(slot, ()):
            if not consumer.closed:
                self.enqueue(consumer)

    def _pump(self) -> None:
        self._pump_scheduled = False
        due, self.due = self.due, []
        for consumer in due:
            if consumer.closed:
                continue
            key = consumer.serve_key()
            waiting = self.serving.get(key)
            if waiting is not None:  # a render of this key is in flight: the next one
                waiting.append(consumer)
            else:
                self.serving[key] = [consumer]
                task = asyncio.ensure_future(self._serve(key))
                self.tasks.add(task)  # a reference, or the loop may drop it
                task.add_done_callback(self.tasks.discard)

    async def _serve(self, key: Any) -> None:
        """Render `key` for the pages waiting on it, send them the frame, and again while
        pages came due meanwhile."""
        try:
            while self.serving.get(key):
                batch, self.serving[key] = self.serving[key], []
                ready = []
                for consumer in batch:
                    if consumer.closed:
                        continue
                    if consumer.window_full():  # it stays dirty; its next ack asks again
                        consumer.scheduled = False
                        continue
                    consumer.dirty = False  # the render below starts after its hints
                    ready.append(consumer)
                if not ready:
                    continue
                started = time.monotonic()
                fresh_after = max(c.hint_at for c in ready)
                try:
                    result = await ready[0].render_for(ready, fresh_after)
                except Exception:  # keep the sockets; the next hint retries
                    log.exception("render failed")
                    for consumer in ready:
                        consumer.scheduled = False
                    continue
                self.frames_rendered += 1
                # The same frame to every page, sent from this loop: no task per page,
                # and encoded once for every page whose socket can take it as bytes.
                shared = key[0] == "shared"
                message = wire = None
                for consumer in ready:
                    frame = consumer.frame_of(result) if shared else result
                    if message is None or message["text"] is not frame:
                        message = {"type": "websocket.send", "text": frame}
                        wire = None
                    if consumer.write is not None and frame is not None:
                        if wire is None:
                            wire = encoded(frame)
                        if consumer.deliver_encoded(frame, wire, started):
                            continue
                    start_eagerly(consumer.deliver(message, started), self.tasks)
        finally:
            leftover = self.serving.pop(key, [])
            for consumer in leftover:  # cancelled mid-way: let them ask again
                consumer.scheduled = False
                if consumer.dirty and not consumer.closed:
                    consumer.schedule()


def start_eagerly(coro, tasks: set[asyncio.Task]) -> None:
    """Run `coro` now, up to its first real suspension; only then make it a task.

    A send to a page usually completes without suspending (the server buffers the bytes),
    so 500 pages cost 500 calls instead of 500 tasks and 500 turns of the loop. A page
    whose transport pushes back (a server that awaits its drain) suspends, and the rest of
    its send goes on as a task of its own without holding up the other pages. (Python
    3.12's eager tasks do the same; this is 3.11.)"""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    except Exception:  # deliver() keeps its own errors; nothing may stop the fan-out
        log.exception("send failed")
        return
    task = asyncio.ensure_future(_finish(coro, yielded))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


@types.coroutine
def _finish(coro, yielded):
    # Hands what `coro` awaits to the task driving this generator, and the outcome back:
    # what `await` does, for a coroutine that was started by hand.
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # noqa: BLE001 - cancellation too goes to the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value


def unpacked(message: dict) -> list[dict]:
    """One hint per event of an `events.ingested` message (notify.events_ingested)."""
    if message.get("type") == "events.ingested":
        return [{"type": "event.ingested", **item} for item in message.get("events", [])]
    return [message]


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def frame_sender(send):
    """The server's own send beneath channels' session wrapper, which on every message
    checks whether the session changed; it only saves sessions on HTTP responses, never
    on a WebSocket frame."""
    wrapper = getattr(send, "__self__", None)
    if isinstance(wrapper, InstanceSessionWrapper) and send == wrapper.send:
        return wrapper.real_send
    return send


def hub() -> Hub:
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = Hub()
    return found


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
        compute() runs once in the database thread for all of them and `frame_of` turns its
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


# --- runs ---------------------------------------------------------------------------------------
class RunListConsumer(PushConsumer):
    """/ws/runs/?workflow=&status=&after=&before=&correlation_id=&q=&before_id="""

    def authorize(self, user):
        self.query, _errors = ds.parse_run_query(self.params)
        if self.query.workflow and self.query.workflow in self.hidden_names:
            return CLOSE_NOT_FOUND
        self.shown: RunRows | None = None  # the render this page shows
        return None

    def concerns(self, message):
        slug = message.get("workflow_slug")
        if slug in self.hidden_names:
            return False
        return not self.query.workflow or slug == self.query.workflow

    def share(self):
        query, hidden = self.query, self.hidden
        return ("runs", query.cache_key(), hidden), lambda: render_run_rows(query, hidden)

    async def render(self, *, snapshot, fresh_after):
        if snapshot:
            self.shown = None  # the whole page
        return await super().render(snapshot=snapshot, fresh_after=fresh_after)

    def frame_of(self, result: RunRows) -> str | None:
        # Only what changed since the render this page shows (run_list_frames.py).
        shown, self.shown = self.shown, result
        return result.since(shown)

    def frame_lost(self) -> None:
        super().frame_lost()
        self.shown = None


def render_run_rows(query: ds.RunQuery, hidden: frozenset[int]) -> RunRows:
    page = ds.run_page(query, hidden=hidden)
    context = {"runs": page.runs, "page": page, "query": query, "oob": True}
    rows = {**context, "runs": [row_html(run) for run in page.runs], "prerendered": True}
    return RunRows(
        rows_html=render_to_string("dashboard/_run_rows.html", rows),
        pager_html=render_to_string("dashboard/_run_pager.html", context),
        limit=query.limit,
    )


class RunDetailConsumer(PushConsumer):
    """/ws/runs/<id>/: the run, its steps, graph, timeline, journal and links."""

    def authorize(self, user):
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        self.related: frozenset[int] = frozenset({self.run_id})
        run = Run.objects.select_related("workflow").filter(pk=self.run_id).first()
        if run is None or run.workflow_id in self.hidden:
            return CLOSE_NOT_FOUND
        return None

    def extra_groups(self):
        return [notify.run_group(self.run_id)]

    def concerns(self, message):
        return message.get("run") in self.related

    def share(self):
        run_id = self.run_id
        return ("run", run_id), lambda: render_run_detail(run_id)

    def frame_of(self, result):
        frame, related = result
        # Child and replay runs change this page too.
        self.related = related
        return frame


def render_run_detail(run_id: int) -> tuple[str, frozenset[int]]:
    view = ds.run_view(run_id)
    if view is None:
        return (
            '<section id="run-detail" hx-swap-oob="outerHTML" data-status="gone">'
            "This run no longer exists.</section>",
            frozenset({run_id}),
        )
    related = {run_id, *(r.pk for r in view.children), *(r.pk for r in view.replays)}
    if view.parent:
        related.add(view.parent.pk)
    return render_to_string(
        "dashboard/_run_detail.html", run_detail_context(view, oob=True)
    ), frozenset(related)


def run_detail_context(view: ds.RunView, *, oob: bool = False) -> dict[str, Any]:
    return {"run": view.run, "steps": view.steps, "view": view, "oob": oob}


# --- overview ---------------------------------------------------------------------------------
class OverviewConsumer(PushConsumer):
    """/ws/overview/?window=15m: figures and chart data, on hints (at most once a second)
    and every few seconds for the gauges that change without hints."""

    hint_types = ("run.changed", "event.ingested")
    interval = 1.0
    refresh_seconds = 5.0

    def authorize(self, user):
        self.window = (
            self.params.get("window")
            if self.params.get("window") in metrics.WINDOWS
            else metrics.DEFAULT_WINDOW
        )
        self.can_switch_demo = has_role(user, "operator")
        return None

    def share(self):
        window, hidden, operator = self.window, self.hidden, self.can_switch_demo
        return (
            ("overview", window, hidden, operator),
            lambda: render_overview(window, hidden, operator),
        )


def render_overview(window: str, hidden: frozenset[int], operator: bool) -> str:
    data = metrics.overview(window, hidden=hidden)
    return render_to_string(
        "dashboard/_overview_figures.html", overview_context(data, operator, oob=True)
    )


def overview_context(
    data: metrics.Overview, operator: bool, *, oob: bool = False
) -> dict[str, Any]:
    return {
        "data": data,
        "figures": data.figures,
        "chart_data": data.as_dict(),
        "can_switch_demo": operator,
        "windows": list(metrics.WINDOWS),
        "oob": oob,
    }


# --- the live event flow -------------------------------------------------------------------------
FLOW_INTERVAL = 0.25
FLOW_CAP = 40  # rows per frame: at most FLOW_CAP / FLOW_INTERVAL rows per second reach a page
FLOW_SNAPSHOT = 25
FLOW_COUNT_LIMIT = 100_000
FLOW_AWAIT_RUNS_SECONDS = 60.0
FLOW_AWAIT_RUNS_MAX = 200


class FlowConsumer(PushConsumer):
    """/ws/flow/?type=&source=&q=&after=<event id>: new events, newest first, at most
    FLOW_CAP per frame; more than that is folded (counted and said). `after` resumes from
    the last event the page has."""

    hint_types = ("event.ingested", "run.changed")
    interval = FLOW_INTERVAL

    def authorize(self, user):
        self.filter_type = self.params.get("type", "").strip()
        self.filter_source = self.params.get("source", "").strip()
        self.filter_text = self.params.get("q", "").strip()
        after = self.params.get("after", "")
        self.last_id = int(after) if after.isdigit() else None
        self.paused = False
        self.folded_total = 0
        self.pending_hints = 0
        self.awaiting: dict[int, float] = {}  # event id -> until when we look for its runs
        self.runs_dirty = False
        return None

    def concerns(self, message):
        if message.get("type") == "run.changed":
            # While a render is on its way, the event it shows may be one this run belongs
            # to (its rows are not in `awaiting` yet): look again after it.
            if (self.awaiting or self.scheduled) and not self.paused:
                self.runs_dirty = True
                return True
            return False
        if self.filter_type and message.get("event_type") != self.filter_type:
            return False
        if self.filter_source and message.get("source") != self.filter_source:
            return False
        # An event of a workflow this user may not see is neither shown nor counted.
        if message.get("workflow") in self.hidden_names:
            return False
        self.pending_hints += 1
        return not self.paused

    async def command(self, message):
        if "pause" in message:
            self.paused = bool(message["pause"])
            # Paused: say so (events keep being counted); resumed: catch up at once.
            self.resync()

    async def render(self, *, snapshot, fresh_after):
        return await database_sync_to_async(self.render_sync)(snapshot)

    def events(self):
        qs = Event.objects.all()
        if self.filter_type:
            qs = qs.filter(type=self.filter_type)
        if self.filter_source:
            qs = qs.filter(source=self.filter_source)
        if self.filter_text:
            from django.db.models import Q, TextField
            from django.db.models.functions import Cast

            qs = qs.annotate(data_text=Cast("data", TextField())).filter(
                Q(data_text__icontains=self.filter_text) | Q(subject__icontains=self.filter_text)
            )
        return store.visible_events(qs, hidden=self.hidden)

    def render_sync(self, snapshot: bool) -> str:
        now = time.monotonic()
        parts = []
        if self.paused:
            return flow_status_html(self, paused=True)
        # Taken before reading: a run hint that comes during this render asks for another.
        runs_dirty, self.runs_dirty = self.runs_dirty, False
        # A first visit replaces the rows; a reconnect (after=) adds what it missed.
        replace = self.last_id is None
        top = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
        if self.last_id is None:  # a first visit: the latest few, nothing folded
            rows = list(self.events().filter(id__lte=top).order_by("-id")[:FLOW_SNAPSHOT])
            folded = 0
        else:
            window = self.events().filter(id__gt=self.last_id, id__lte=top)
            rows = list(window.order_by("-id")[:FLOW_CAP])
            folded = 0
            if len(rows) == FLOW_CAP:
                folded = max(0, window[:FLOW_COUNT_LIMIT].count() - FLOW_CAP)
        self.folded_total += folded
        self.pending_hints = 0
        self.last_id = max(self.last_id or 0, top)
        updates = ""
        if runs_dirty or rows:
            updates = self.flow_run_cells(now)
        if rows:
            for event in rows:
                if len(self.awaiting) < FLOW_AWAIT_RUNS_MAX:
                    self.awaiting[event.pk] = now + FLOW_AWAIT_RUNS_SECONDS
            parts.append(render_flow_rows(rows, folded=folded, replace=replace, hidden=self.hidden))
        elif replace:
            parts.append(render_flow_rows([], folded=0, replace=True, hidden=self.hidden))
        parts.append(updates)
        parts.append(flow_status_html(self, paused=False, folded=folded))
        return "".join(parts)

    def flow_run_cells(self, now: float) -> str:
        """Refresh the "runs" cell of recent events whose runs may have started since."""
        self.awaiting = {k: until for k, until in self.awaiting.items() if until > now}
        if not self.awaiting:
            return ""
        started: dict[int, list[Run]] = {}
        for run in (
            Run.objects.select_related("workflow")
            .filter(event_id__in=list(self.awaiting))
            .exclude(origin=SHADOW)
            .exclude(workflow_id__in=sorted(self.hidden))
            .order_by("id")
        ):
            started.setdefault(run.event_id, []).append(run)
        return "".join(
            render_to_string(
                "dashboard/_flow_runs_cell.html", {"event_id": event_id, "runs": runs, "oob": True}
            )
            for event_id, runs in started.items()
        )


def render_flow_rows(
    rows: list[Event], *, folded: int, replace: bool, hidden: frozenset[int]
) -> str:
    ids = [e.pk for e in rows]
    started: dict[int, list[Run]] = {}
    for run in (
        Run.objects.select_related("workflow")
        .filter(event_id__in=ids)
        .exclude(origin=SHADOW)  # a draft tried on the event; the event started no such run
        .exclude(workflow_id__in=sorted(hidden))
    ):
        started.setdefault(run.event_id, []).append(run)
    types = {e.type for e in rows}
    subscribed: dict[str, list[str]] = {}
    for event_type, slug in (
        TriggerSubscription.objects.filter(event_type__in=types)
        .exclude(workflow_id__in=sorted(hidden))
        .values_list("event_type", "workflow__slug")
    ):
        subscribed.setdefault(event_type, []).append(slug)
    items = [
        {"event": e, "runs": started.get(e.pk, []), "subscribed": subscribed.get(e.type, [])}
        for e in rows
    ]
    return render_to_string(
        "dashboard/_flow_rows.html",
        {"items": items, "folded": folded, "replace": replace, "oob": True},
    )


def flow_status_html(consumer: FlowConsumer, *, paused: bool, folded: int = 0) -> str:
    return render_to_string(
        "dashboard/_flow_status.html",
        {
            "paused": paused,
            "folded": folded,
            "folded_total": consumer.folded_total,
            "waiting": consumer.pending_hints,
            "last_id": consumer.last_id or 0,
            "oob": True,
        },
    )


# --- lineage -----------------------------------------------------------------------------------
class LineageConsumer(PushConsumer):
    """/ws/lineage/<event id>/: the causation graph, redrawn when a run in it changes, a
    new run starts, or an event of the same conversation arrives."""

    hint_types = ("run.changed", "event.ingested")
    interval = 0.5

    def authorize(self, user):
        self.event_id = int(self.scope["url_route"]["kwargs"]["event_id"])
        event = Event.objects.filter(pk=self.event_id).only("correlation_id").first()
        if event is None or store.is_hidden(event, hidden=self.hidden):
            return CLOSE_NOT_FOUND  # as the lineage page answers 404
        self.correlation = event.correlation_id if event else None
        self.run_ids: frozenset[int] = frozenset()
        self.max_run_id = 0
        return None

    def concerns(self, message):
        if message.get("type") == "event.ingested":
            return bool(self.correlation) and message.get("correlation") == self.correlation
        run = message.get("run") or 0
        return run in self.run_ids or run > self.max_run_id

    def share(self):
        event_id, hidden = self.event_id, self.hidden
        return ("lineage", event_id, hidden), lambda: render_lineage(event_id, hidden)

    def frame_of(self, result):
        frame, self.run_ids, self.max_run_id = result
        return frame


def render_lineage(event_id: int, hidden: frozenset[int]) -> tuple[str, frozenset[int], int]:
    graph = ds.lineage(event_id, hidden=hidden)
    html = render_to_string(
        "dashboard/lineage_graph.html", {"lineage": graph, "event_id": event_id, "oob": True}
    )
    if graph is None:
        return html, frozenset(), 0
    return html, graph.run_ids, graph.max_run_id


# --- workers and queues ------------------------------------------------------------------------
class SystemConsumer(PushConsumer):
    """/ws/system/: workers, queues, bus partitions and circuit breakers, every few seconds
    (none of them sends hints)."""

    hint_types = ()
    refresh_seconds = 3.0

    async def render(self, *, snapshot, fresh_after):
        from . import system_views

        # Not the database thread: asking the workers blocks for up to a second.
        return await sync_to_async(_render_system, thread_sensitive=False)(system_views)


def _render_system(system_views) -> str:
    try:
        return render_to_string(
            "dashboard/_system_panels.html", {**system_views.system_context(), "oob": True}
        )
    finally:
        connections.close_all()  # this pool thread's own connection
