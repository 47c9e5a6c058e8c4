"""The command that serves Signalbox's web process, shared by `make run`, the test stack
and the benchmarks so that all three measure and test the same server.

uvicorn with uvloop and httptools, several worker processes: measured against daphne,
granian and gunicorn on these machines (docs/architecture.md, "The web server"), it served
both the event-ingest fast path and ordinary Django pages fastest, and it speaks
WebSockets on the same port (the dashboard's live pushes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_WORKERS = 2
# Chosen by measurement (docs/benchmarks.md, "Changes since that table").
DEFAULT_BUS_CONSUMERS = 2


def web_workers(env: Mapping[str, str] = os.environ) -> int:
    """SIGNALBOX_WEB_WORKERS, else 2 on PostgreSQL and 1 on the embedded SQLite: SQLite
    takes one writer at a time, and a second web process's group commits only wait on the
    first's in SQLite's busy handler, which polls in sleeps of up to 100 ms (measured here:
    p99 60-130 ms with two processes, 30-45 ms with one, at the same throughput)."""
    default = DEFAULT_WORKERS if env.get("DATABASE_URL") else 1
    return max(1, int(env.get("SIGNALBOX_WEB_WORKERS") or default))


def bus_consumers(env: Mapping[str, str] = os.environ) -> int:
    """SIGNALBOX_BUS_CONSUMERS, else 2 on PostgreSQL and 1 on the embedded SQLite. Each
    `consume_bus` process matches events and runs new runs' light steps on one core (the
    GIL); they share the partitions by Redis leases (workflows/events/bus_leases.py).
    On SQLite a second consumer only waits for the first's write lock."""
    default = DEFAULT_BUS_CONSUMERS if env.get("DATABASE_URL") else 1
    return max(1, int(env.get("SIGNALBOX_BUS_CONSUMERS") or default))


def bus_names(env: Mapping[str, str] = os.environ) -> list[str]:
    """The launcher's names for the bus consumer processes: bus, bus-2, bus-3, ..."""
    return ["bus" if n == 1 else f"bus-{n}" for n in range(1, bus_consumers(env) + 1)]


def web_command(
    python: str,
    *,
    host: str,
    port: int | str,
    workers: int | None = None,
    env: Mapping[str, str] = os.environ,
) -> list[str]:
    return [
        str(Path(python).parent / "uvicorn"),
        "orchestrator.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers or web_workers(env)),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--ws",
        "websockets-sansio",
        # No permessage-deflate: browsers always ask for it, and it compresses every frame
        # once per socket with that socket's own context, ~0.1 ms each on these cores
        # (50 ms for one frame to 500 pages). Live frames are small differences; without
        # it the same encoded frame is written to every socket (dashboard/live/frame_writer.py).
        "--ws-per-message-deflate",
        "false",
        "--proxy-headers",
        "--no-access-log",
        # Let a worker finish its answers on SIGTERM, but never hang a stop for long.
        "--timeout-graceful-shutdown",
        "5",
    ]


def web_env(env: dict[str, str]) -> dict[str, str]:
    """The web processes' environment: pooled PostgreSQL connections (each request's sync
    code runs on a fresh thread under ASGI; see settings.py)."""
    return dict(env, SIGNALBOX_DB_POOL="1")
