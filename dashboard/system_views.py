"""Workers and queues: Celery workers online (their queues, active tasks, counters), queue
lengths, bus partitions with pending entries and lag, the broker connections' health and
the circuit breakers.

Asking Celery's workers is a broadcast that waits its whole timeout for replies (it cannot
know how many workers there are), so the three questions go out side by side (one second,
not three), off the database thread, and the answer is shared by every open page of the
process for a few seconds. The page itself never waits for it: it shows the last answer
this process has (or "asking the workers") and the socket's first frame brings the fresh
one."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.shortcuts import render

from workflows import circuit, gauges, heartbeat
from workflows.services.connections import connection_health

from . import metrics
from .access import role_required

log = logging.getLogger("signalbox.system")

INSPECT_TIMEOUT = 1.0
SYSTEM_CACHE_SECONDS = 2.5
COMPONENTS = ("scheduler", "bus-consumer")
INSPECT_QUESTIONS = ("stats", "active", "active_queues")


def celery_workers(timeout: float = INSPECT_TIMEOUT) -> tuple[list[dict[str, Any]], str]:
    """Workers that answered within `timeout`, and an error text when asking failed."""
    from orchestrator.celery import app

    def ask(question: str) -> dict:
        return getattr(app.control.inspect(timeout=timeout), question)() or {}

    try:
        with ThreadPoolExecutor(len(INSPECT_QUESTIONS), "inspect") as pool:
            stats, active, queues = pool.map(ask, INSPECT_QUESTIONS)
    except Exception as exc:  # noqa: BLE001 - the broker is away: say so on the page
        return [], f"could not ask the workers: {exc}"
    workers = []
    for name in sorted(set(stats) | set(active) | set(queues)):
        info = stats.get(name) or {}
        pool = info.get("pool") or {}
        workers.append(
            {
                "name": name,
                "pid": info.get("pid"),
                "uptime": info.get("uptime"),
                "concurrency": pool.get("max-concurrency"),
                "processed": sum((info.get("total") or {}).values()),
                "queues": [q.get("name") for q in queues.get(name) or []],
                "active": [
                    {
                        "id": task.get("id"),
                        "name": task.get("name"),
                        "args": task.get("args"),
                        "started": task.get("time_start"),
                    }
                    for task in active.get(name) or []
                ],
            }
        )
    return workers, ""


def _component_beats() -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for component in COMPONENTS:
        try:
            beat = heartbeat.last_beat(component)
        except Exception:  # noqa: BLE001 - Redis away
            beat = None
        out.append(
            {
                "name": component,
                "alive": beat is not None,
                "seconds_ago": round(now - beat, 1) if beat else None,
            }
        )
    return out


def cached_workers() -> tuple[list[dict[str, Any]], str]:
    return metrics.cache.get("system-workers", SYSTEM_CACHE_SECONDS, celery_workers)


def compute_system(*, wait_for_workers: bool = True) -> dict[str, Any]:
    if wait_for_workers:
        workers, worker_error = cached_workers()
        asking = False
    else:
        # The last answer, however old, or none yet: the socket's snapshot brings a fresh one.
        last = metrics.cache.peek("system-workers")
        (workers, worker_error), asking = last or ([], ""), last is None
    queue_names = sorted(
        {settings.CELERY_TASK_DEFAULT_QUEUE, *(q for w in workers for q in w["queues"] if q)}
    )
    try:
        circuits = [c.as_dict() for c in circuit.circuits()]
        circuit_error = ""
    except Exception as exc:  # noqa: BLE001 - Redis away
        circuits, circuit_error = [], f"could not read the circuit breakers: {exc}"
    try:
        broker_connections, connection_error = connection_health(), ""
    except Exception as exc:  # noqa: BLE001 - the database away: say so on the page
        broker_connections, connection_error = [], f"could not read the connections: {exc}"
    return {
        "workers": workers,
        "worker_error": worker_error,
        "queues": gauges.queue_lengths(queue_names),
        "partitions": gauges.bus_partitions(),
        "bus_group": settings.SIGNALBOX["BUS_GROUP"],
        "components": _component_beats(),
        "circuits": circuits,
        "circuit_error": circuit_error,
        "connections": broker_connections,
        "connection_error": connection_error,
        "asking_workers": asking,
        "checked_at": time.time(),
    }


def system_context() -> dict[str, Any]:
    return metrics.cache.get("system", SYSTEM_CACHE_SECONDS, compute_system)


@role_required("viewer")
def system(request):
    return render(request, "dashboard/system.html", compute_system(wait_for_workers=False))
