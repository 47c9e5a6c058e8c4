"""Workers and queues: what workflows.operations.system_status gathers (Celery workers
online, queue lengths, bus partitions, heartbeats, broker connections, circuit breakers),
shown on a page.

Asking Celery's workers is a broadcast that waits its whole timeout for replies (it cannot
know how many workers there are), so the three questions go out side by side (one second,
not three), off the database thread, and the answer is shared by every open page of the
process for a few seconds. The page itself never waits for it: it shows the last answer
this process has (or "asking the workers") and the socket's first frame brings the fresh
one."""

from __future__ import annotations

from typing import Any

from django.shortcuts import render

from dashboard import metrics
from dashboard.access import role_required
from workflows.operations import system_status
from workflows.operations.system_status import celery_workers

SYSTEM_CACHE_SECONDS = 2.5


def cached_workers() -> tuple[list[dict[str, Any]], str]:
    return metrics.cache.get("system-workers", SYSTEM_CACHE_SECONDS, celery_workers)


def compute_system(*, wait_for_workers: bool = True) -> dict[str, Any]:
    if wait_for_workers:
        answer, asking = cached_workers(), False
    else:
        # The last answer, however old, or none yet: the socket's snapshot brings a fresh one.
        last = metrics.cache.peek("system-workers")
        answer, asking = last or ([], ""), last is None
    return {**system_status.system(workers=answer), "asking_workers": asking}


def system_context() -> dict[str, Any]:
    return metrics.cache.get("system", SYSTEM_CACHE_SECONDS, compute_system)


@role_required("viewer")
def system(request):
    return render(request, "dashboard/system.html", compute_system(wait_for_workers=False))
