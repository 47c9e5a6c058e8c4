"""Workers and queues: Celery workers online (their queues, active tasks, counters), queue
lengths, bus partitions with pending entries and lag, the broker connections' health and
the circuit breakers.

Asking Celery's workers is a broadcast that waits for replies, so it has a short timeout,
runs off the database thread, and its answer is shared by every open page of the process
for a few seconds."""

from __future__ import annotations

import logging
import time
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


def celery_workers(timeout: float = INSPECT_TIMEOUT) -> tuple[list[dict[str, Any]], str]:
    """Workers that answered within `timeout`, and an error text when asking failed."""
    from orchestrator.celery import app

    try:
        inspect = app.control.inspect(timeout=timeout)
        stats = inspect.stats() or {}
        active = inspect.active() or {}
        queues = inspect.active_queues() or {}
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


def compute_system() -> dict[str, Any]:
    workers, worker_error = celery_workers()
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
        "checked_at": time.time(),
    }


def system_context() -> dict[str, Any]:
    return metrics.cache.get("system", SYSTEM_CACHE_SECONDS, compute_system)


@role_required("viewer")
def system(request):
    return render(request, "dashboard/system.html", system_context())
