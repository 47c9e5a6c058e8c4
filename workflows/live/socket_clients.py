"""WebSocket clients connected, across every web process.

Each web process counts its own open sockets (by page: the path segment after /ws/) and
writes them to a Redis hash of its own that expires unless renewed, on every change
(coalesced) and every RENEW_SECONDS meanwhile; the scrape adds up every live process's
hash. A web process that dies stops renewing, and its sockets stop counting within
EXPIRE_SECONDS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter

import redis

from workflows.infra.redis_client import client, key

PROCESSES_KEY = ("metrics", "ws", "processes")  # set of process ids
RENEW_SECONDS = 15.0
EXPIRE_SECONDS = 45

_process = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
_open: Counter[str] = Counter()
_changed: asyncio.Event | None = None
_writer: asyncio.Task | None = None


def page_of(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    return parts[1] if len(parts) > 1 and parts[0] == "ws" else "other"


def _write(snapshot: dict[str, int]) -> None:
    name = key("metrics", "ws", _process)
    pipe = client().pipeline(transaction=False)
    pipe.delete(name)
    pipe.hset(name, mapping={"_": 0, **snapshot})  # never empty: an empty hash is no key
    pipe.expire(name, EXPIRE_SECONDS)
    pipe.sadd(key(*PROCESSES_KEY), _process)
    pipe.execute()


async def _keep_written() -> None:
    while True:
        assert _changed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_changed.wait(), RENEW_SECONDS)
        _changed.clear()
        try:
            await asyncio.to_thread(_write, dict(_open))  # zeros too: series stay
        except redis.RedisError:
            await asyncio.sleep(1.0)
            _changed.set()  # try again
            continue
        if not any(_open.values()) and not _changed.is_set():
            return  # nothing open: the zero written stands; the next accept starts again


_loop: asyncio.AbstractEventLoop | None = None


def _moved(page: str, delta: int) -> None:
    global _changed, _writer, _loop
    _open[page] += delta
    loop = asyncio.get_running_loop()
    # One writer per event loop (a server has one; a test process may run several).
    if _loop is not loop or _writer is None or _writer.done():
        _loop, _changed = loop, asyncio.Event()
        _writer = loop.create_task(_keep_written())
    assert _changed is not None
    _changed.set()


class CountSockets:
    """ASGI middleware around the WebSocket router: a socket counts from its accept to
    the end of its consumer."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        page = page_of(scope.get("path", ""))
        accepted = False

        async def noting(message):
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                _moved(page, +1)
            await send(message)

        try:
            return await self.app(scope, receive, noting)
        finally:
            if accepted:
                _moved(page, -1)


def totals() -> dict[str, int]:
    """page -> sockets open, over every web process that renewed its count lately."""
    conn = client()
    processes = sorted(conn.smembers(key(*PROCESSES_KEY)))
    if not processes:
        return {}
    pipe = conn.pipeline(transaction=False)
    for process in processes:
        pipe.hgetall(key("metrics", "ws", process))
    out: Counter[str] = Counter()
    gone = []
    for process, counts in zip(processes, pipe.execute(), strict=True):
        if not counts:
            gone.append(process)
        for page, n in counts.items():
            if page != "_":
                out[page] += int(n)
    if gone:
        conn.srem(key(*PROCESSES_KEY), *gone)
    return dict(out)
