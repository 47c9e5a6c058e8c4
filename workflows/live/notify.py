"""Tell connected browsers that something changed, after the change is committed.

Messages are small hints ({"type": "run.changed", "run": id, "seq": n}); consumers re-read
the database, so a lost hint costs freshness, never correctness.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from django.db import transaction

from workflows.core.lineage import emitting_workflow

log = logging.getLogger("signalbox.notify")

RUNS_GROUP = "runs"


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


# Per thread (commit hooks run on the committing thread): the latest run.changed hint
# registered for each run. A transaction that moves a run several times (a light chain run
# by the bus consumer) sends one hint after commit, the last: the moves between were never
# visible to anyone, and a page re-reads the run anyway.
_latest_run_hints = threading.local()


def run_changed(*, run_id: int, seq: int, workflow_slug: str, status: str) -> None:
    message = {
        "type": "run.changed",
        "run": run_id,
        "seq": seq,
        "workflow_slug": workflow_slug,
        "status": status,
    }
    latest = _latest_run_hints.__dict__.setdefault("runs", {})
    if len(latest) > 10_000:  # left by rolled-back transactions (a hint is only a hint)
        latest.clear()
    token = latest[run_id] = object()

    def send() -> None:
        if latest.get(run_id) is token:
            del latest[run_id]
            # When it was committed (wall clock, for dashboard/live/push_timing.py).
            message["at"] = time.time()
            _send([RUNS_GROUP, run_group(run_id)], message)

    transaction.on_commit(send)


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
                await group_send(layer, groups, message)
            except Exception as exc:  # noqa: BLE001 - a missed hint must never fail anything
                log.warning("could not push %s: %s", message["type"], exc)


# One round trip for a hint to every channel of its groups. channels_redis's group_send
# takes four per group (expire, read members, expire messages, send), eight for a run's two
# groups. This script does the same work in Redis at once: drop expired members, read the
# members of every group, and add to each channel key one message that names its channels
# (`__asgi_channel__`, as channels_redis's own group_send writes it; a channel in two of the
# groups gets the hint once). The message is the layer's msgpack map with that one entry
# added: ARGV[6] is the map's entries without its header, ARGV[7] their number (< 15).
GROUP_SEND_LUA = """
local by_key, order = {}, {}
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[1])
    for _, channel in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
        local bang = string.find(channel, '!', 1, true)
        local key = ARGV[5] .. (bang and string.sub(channel, 1, bang) or channel)
        local entry = by_key[key]
        if not entry then
            entry = {channels = {}, seen = {}}
            by_key[key] = entry
            order[#order + 1] = key
        end
        if not entry.seen[channel] then
            entry.seen[channel] = true
            entry.channels[#entry.channels + 1] = channel
        end
    end
end
local header = string.char(0x80 + tonumber(ARGV[7]) + 1)
local over = 0
for _, key in ipairs(order) do
    redis.call('ZREMRANGEBYSCORE', key, 0, ARGV[2])
    if redis.call('ZCOUNT', key, '-inf', '+inf') < tonumber(ARGV[9]) then
        local message = ARGV[8] .. header .. ARGV[6] .. cmsgpack.pack('__asgi_channel__')
            .. cmsgpack.pack(by_key[key].channels)
        redis.call('ZADD', key, ARGV[3], message)
        redis.call('EXPIRE', key, ARGV[4])
    else
        over = over + 1
    end
end
return over
"""


def _one_round_trip(layer) -> bool:
    """Whether `layer` is a channels_redis layer this script can speak for: one Redis
    server, plain msgpack (no encryption), one capacity for every channel."""
    try:
        from channels_redis.core import RedisChannelLayer
        from channels_redis.serializers import MsgPackSerializer
    except ImportError:  # pragma: no cover - channels_redis is a dependency
        return False
    return (
        type(layer) is RedisChannelLayer
        and layer.ring_size == 1
        and isinstance(layer._serializer, MsgPackSerializer)
        and layer._serializer.crypter is None
        and not layer.channel_capacity
    )


async def group_send(layer, groups: list[str], message: dict) -> None:
    """`message` to every channel of `groups`, in one Redis round trip when the layer
    allows (else through the layer's own group_send, group by group)."""
    import msgpack

    if not _one_round_trip(layer) or len(message) >= 15 or "__asgi_channel__" in message:
        for group in groups:
            await layer.group_send(group, message)
        return
    for group in groups:
        assert layer.require_valid_group_name(group), "Group name not valid"
    body = msgpack.packb(message)
    now = time.time()
    connection = layer.connection(0)
    script = getattr(layer, "_signalbox_group_send", None)
    if script is None or script.registered_client is not connection:
        script = layer._signalbox_group_send = connection.register_script(GROUP_SEND_LUA)
    prefix_length = layer._serializer.random_prefix_length
    over = await script(
        keys=[layer._group_key(group) for group in groups],
        args=[
            int(now) - layer.group_expiry,
            int(now) - int(layer.expiry),
            now,
            layer.expiry,
            layer.prefix,
            body[1:],
            len(message),
            random.getrandbits(8 * prefix_length).to_bytes(prefix_length, "big")
            if prefix_length
            else b"",
            layer.capacity,
        ],
    )
    if over:
        log.info("%s channels over capacity in groups %s", over, groups)


_pusher = _Pusher()


def _send(groups: list[str], message: dict) -> None:
    _pusher.submit(groups, message)
