"""The Hub: one subscription to the dashboard's hint groups per web process (per event loop),
handing each hint to the sockets that want it, and serving frames to many sockets at once.

- Hints: services send small hints after commit (workflows/live/notify.py). The Hub listens to
  the "runs" and "events" groups once and hands each hint to the interested sockets
  (indexed by hint type) by a function call; a socket marks itself dirty. Groups a socket
  needs beyond those (a run's, a replay batch's) the Hub joins for it.
- Sharing: pages that show the same thing to the same visibility are served together: one
  render in the render thread, the same frame string handed to every page. A render is
  only used for a page if it started after the page's last hint, so a page never shows a
  state older than a hint it was given. A frame is encoded once and written as the same
  bytes to every socket that can take them (frame_writer.py).
- Renders run on a thread of their own (`renderer`), which keeps its database connection
  from one render to the next while sockets are open: the database thread of
  database_sync_to_async hands its connection back to the pool after every call, and takes
  one again (with the pool's health check, a round trip) before the next, so a render cost
  a round trip more, and waited behind HTTP views' sync code in that one thread.
- With SIGNALBOX_PUSH_TIMING=1 in its environment the Hub logs one line per frame it
  serves (push_timing.py): what bench/push.py reports as the server's own share.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from channels.sessions import InstanceSessionWrapper
from django.db import InterfaceError, OperationalError, connection

from dashboard.live import push_timing
from dashboard.live.frame_writer import encoded
from workflows.live import notify

if TYPE_CHECKING:
    from dashboard.live.socket import PushConsumer

log = logging.getLogger("signalbox.live")

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
        self.computing: float | None = None

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
        # No socket left: the render thread's connection goes back (to the pool).
        await asyncio.get_running_loop().run_in_executor(renderer(), _release)

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
        """compute() in the render thread, or the result of a computation of the same key
        that started at or after `fresh_after`."""
        entry = self.renders.get(key)
        if entry is not None and entry[0] >= fresh_after:
            return await asyncio.shield(entry[1])
        started = time.monotonic()
        if push_timing.ENABLED:
            compute = self._timed(compute)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(renderer(), _render, compute)
        self.renders[key] = (started, future)
        if len(self.renders) > 256:
            cutoff = started - RENDER_KEEP_SECONDS
            for stale in [k for k, (t, f) in self.renders.items() if t < cutoff and f.done()]:
                del self.renders[stale]
        return await asyncio.shield(future)

    def _timed(self, compute: Callable[[], Any]) -> Callable[[], Any]:
        def timed():
            self.computing = time.monotonic()  # push_timing: the hop to the render thread
            return compute()

        return timed

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
                committed: list[float] = []
                hinted: list[float] = []
                for consumer in batch:
                    if consumer.closed:
                        continue
                    if consumer.window_full():  # it stays dirty; its next ack asks again
                        consumer.scheduled = False
                        continue
                    consumer.dirty = False  # the render below starts after its hints
                    if consumer.committed_at is not None:
                        committed.append(consumer.committed_at)
                        hinted.append(consumer.hinted_at)
                        consumer.committed_at = None
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
                rendered = time.monotonic()
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
                if push_timing.ENABLED:
                    push_timing.frame_served(
                        key=str(key[1][0]) if shared else "own",
                        pages=len(ready),
                        committed=committed,
                        hinted=hinted,
                        started=started,
                        rendered=rendered,
                        computing=self.computing,
                    )
        finally:
            leftover = self.serving.pop(key, [])
            for consumer in leftover:  # cancelled mid-way: let them ask again
                consumer.scheduled = False
                if consumer.dirty and not consumer.closed:
                    consumer.schedule()


_renderer: ThreadPoolExecutor | None = None
_renderer_lock = threading.Lock()  # Hubs of several loops (tests) share the one thread


def renderer() -> ThreadPoolExecutor:
    """The process's render thread (one: renders are serialised, as they were in the
    database thread, and the one connection it keeps is enough)."""
    global _renderer
    if _renderer is None:
        with _renderer_lock:
            if _renderer is None:
                _renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signalbox-render")
    return _renderer


def _render(compute: Callable[[], Any]) -> Any:
    """compute() in the render thread, on the connection it kept from the last render."""
    kept = connection.connection is not None
    try:
        return compute()
    except (OperationalError, InterfaceError):
        connection.close()
        if not kept:
            raise
        # The kept connection had died (a database restart, an idle timeout): once more on
        # a new one, as the pool's health check would have given. A render only reads.
        return compute()
    except BaseException:
        connection.close()  # whatever state it is in, the next render starts clean
        raise


def _release() -> None:
    connection.close()  # in the render thread: `connection` is per thread


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
