"""Web processes say they are alive: one Redis key per process, renewed from its event loop.

Each uvicorn worker process runs the ASGI lifespan protocol; on startup `Lifespan` starts a
task on the process's event loop that writes `heartbeat:web:<host>:<pid>` (a few facts, as
JSON) with a TTL of HEARTBEAT_TTL_SECONDS every third of it, and names the process in one
set. Beating from the event loop, not a thread of its own, means a process whose loop is
wedged stops beating: it is not serving. On shutdown the key goes at once; a killed process
drops out when its key expires (Redis keeps the time, so no clock is compared). Readers
(`manage.py status`, the workers page) list the set and read the keys in one pipeline,
dropping the names whose key expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

import redis
from django.conf import settings

from workflows.infra.redis_client import client, key

log = logging.getLogger("signalbox.heartbeat")

PROCESSES = ("heartbeat", "web-processes")  # the set of names; each one's key below


def ttl() -> int:
    return int(settings.SIGNALBOX["HEARTBEAT_TTL_SECONDS"])


def every() -> float:
    """Seconds between beats: a process misses two before it counts as gone."""
    return ttl() / 3


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(name: str, started: float) -> None:
    facts = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "beat": time.time(),
    }
    pipe = client().pipeline(transaction=False)
    pipe.set(key("heartbeat", "web", name), json.dumps(facts), ex=ttl())
    pipe.sadd(key(*PROCESSES), name)
    pipe.execute()


def forget(name: str) -> None:
    pipe = client().pipeline(transaction=False)
    pipe.delete(key("heartbeat", "web", name))
    pipe.srem(key(*PROCESSES), name)
    pipe.execute()


def processes() -> list[dict[str, Any]]:
    """Every web process whose heartbeat has not expired: name, host, pid, uptime and
    seconds since its last beat, by name. Raises redis.RedisError when Redis is away."""
    conn = client()
    names = sorted(conn.smembers(key(*PROCESSES)))
    if not names:
        return []
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.get(key("heartbeat", "web", name))
    now, alive, gone = time.time(), [], []
    for name, value in zip(names, pipe.execute(), strict=True):
        if not value:
            gone.append(name)
            continue
        facts = json.loads(value)
        alive.append(
            {
                "name": name,
                "host": facts.get("host"),
                "pid": facts.get("pid"),
                "uptime": round(now - facts["started"]) if facts.get("started") else None,
                "seconds_ago": round(max(0.0, now - facts.get("beat", now)), 1),
            }
        )
    if gone:
        conn.srem(key(*PROCESSES), *gone)
    return alive


async def keep_beating(name: str, started: float) -> None:
    while True:
        try:
            await asyncio.to_thread(beat, name, started)
        except redis.RedisError as exc:
            log.warning("web heartbeat not written (%s); trying again", exc)
        await asyncio.sleep(every())


class Lifespan:
    """The ASGI lifespan app of a web process: beats from startup to shutdown."""

    async def __call__(self, scope, receive, send) -> None:
        name, task = process_name(), None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                task = asyncio.get_running_loop().create_task(
                    keep_beating(name, time.time()), name="web-heartbeat"
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                with contextlib.suppress(redis.RedisError):
                    await asyncio.to_thread(forget, name)
                await send({"type": "lifespan.shutdown.complete"})
                return
