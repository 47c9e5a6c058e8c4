"""Which Celery queue a step attempt's message goes to.

Each step kind routes to a named queue, so slow outbound work (HTTP calls, mail, python
functions) and quick transforms can be served by workers of their own, scaled on their own
queue's depth (docs/operations.md). A kind named in SIGNALBOX_STEP_QUEUES goes where it
says; any other goes to SIGNALBOX_STEP_QUEUE_FAST when it is light (it only computes over
JSON) and to SIGNALBOX_STEP_QUEUE_IO otherwise. Every queue is declared in
CELERY_TASK_QUEUES, so a worker started without `-Q` consumes them all (`make run`).

The other tasks (a run finished, a replay batch) keep the default queue, CELERY_TASK_DEFAULT_QUEUE:
some worker must consume it.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.db import DatabaseError


@functools.cache
def _light_kinds() -> frozenset[str]:
    from workflows.steps import registry

    return frozenset(name for name, kind in registry.all_kinds().items() if kind.light)


def queue_for(kind: str) -> str:
    configured = settings.SIGNALBOX_STEP_QUEUES.get(kind)
    if configured:
        return configured
    if kind in _light_kinds():
        return settings.SIGNALBOX_STEP_QUEUE_FAST
    return settings.SIGNALBOX_STEP_QUEUE_IO


def step_queues() -> list[str]:
    """Every queue a step message may be sent to."""
    return sorted(
        {
            settings.SIGNALBOX_STEP_QUEUE_FAST,
            settings.SIGNALBOX_STEP_QUEUE_IO,
            *settings.SIGNALBOX_STEP_QUEUES.values(),
        }
    )


def all_queues() -> list[str]:
    """Every queue Signalbox sends to: the default one (run follow-ups, replay batches)
    first, then the step queues."""
    default = settings.CELERY_TASK_DEFAULT_QUEUE
    return [default, *(name for name in step_queues() if name != default)]


def routes() -> dict[str, list[str]]:
    """queue -> the step kinds that go to it (for `manage.py status` and the docs)."""
    from workflows.steps import registry

    out: dict[str, list[str]] = {name: [] for name in step_queues()}
    for kind in sorted(registry.all_kinds()):
        out.setdefault(queue_for(kind), []).append(kind)
    return out


def send(step_run_id: int, kind: str | None = None) -> None:
    """Send the attempt's message now, to its kind's queue. Without a kind (a caller that
    holds only the id) the kind is read; if the database cannot say, the light queue is
    used: only light attempts are handed on by id alone."""
    from workflows.runs.task_queue import EXECUTE_STEP, task

    if kind is None:
        from workflows.runs.models import StepRun

        try:
            kind = StepRun.objects.filter(pk=step_run_id).values_list("kind", flat=True).first()
        except DatabaseError:
            kind = None
    queue = queue_for(kind) if kind else settings.SIGNALBOX_STEP_QUEUE_FAST
    task(EXECUTE_STEP).s(step_run_id).set(queue=queue).delay()
