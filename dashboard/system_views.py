"""Workers and queues: what workflows.system_status gathers (Celery workers online, queue
lengths, bus partitions, heartbeats, broker connections, circuit breakers), shown on a page.

Asking Celery's workers is a broadcast that waits for replies, so it has a short timeout,
runs off the database thread, and its answer is shared by every open page of the process
for a few seconds."""

from __future__ import annotations

from typing import Any

from django.shortcuts import render

from workflows import system_status

from . import metrics
from .access import role_required

SYSTEM_CACHE_SECONDS = 2.5


def compute_system() -> dict[str, Any]:
    return system_status.system(system_status.INSPECT_TIMEOUT)


def system_context() -> dict[str, Any]:
    return metrics.cache.get("system", SYSTEM_CACHE_SECONDS, compute_system)


@role_required("viewer")
def system(request):
    return render(request, "dashboard/system.html", system_context())
