"""The scheduler's sweeps over step attempts: what timers, lost messages and lost workers
leave behind. Each sweep is fenced like the path it stands in for (a conditional UPDATE, or
`record_result` from the status the attempt must still have), so two schedulers, or a
sweep racing a late worker, change a row once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from workflows.catalog.definition_parsing import definition_for
from workflows.core import engine
from workflows.core.states import TERMINAL_RUN, RunStatus, StepStatus
from workflows.runs import advance as runs
from workflows.runs import step_heartbeats
from workflows.runs.advance import DEFAULT_STEP_TIMEOUT, LEASE_GRACE, REENQUEUE_AFTER, record_result
from workflows.runs.control import admit_queued
from workflows.runs.gauges import queue_lengths
from workflows.runs.models import Run, StepRun
from workflows.runs.waits import child_finished, wake_due

log = logging.getLogger("signalbox.runs")


def enqueue_due_steps(*, now=None, limit: int = 500, judge_leases: bool = True) -> int:
    """The scheduler's timer sweep: enqueue retries whose back-off has passed, re-enqueue
    attempts whose message was lost, wake waiting steps that are due, and fail attempts
    that outlived their lease (unless `judge_leases` is false: right after a database
    outage every heartbeat looks old, because no worker could write one)."""
    now = now or timezone.now()
    queued = StepRun.objects.filter(status=StepStatus.QUEUED, run__status=RunStatus.RUNNING)
    sweeps = [queued.filter(enqueued_at=None, not_before__lte=now)]
    if messages_waiting() == 0:
        # Only while no message waits: a queued attempt sent long ago is then lost, not
        # behind a backlog. Re-sending behind a backlog fed it (every waiting attempt sent
        # again each REENQUEUE_AFTER, each a task to run for nothing: seen at 2,000 queued).
        sweeps.append(queued.filter(enqueued_at__lt=now - REENQUEUE_AFTER))
    count = 0
    for sweep in sweeps:
        for pk, kind in list(sweep.values_list("pk", "kind")[:limit]):
            # The same filter again as a conditional UPDATE: of two schedulers, one sends it.
            with transaction.atomic():
                if sweep.filter(pk=pk).update(enqueued_at=now):
                    runs.enqueue_on_commit(pk, kind)  # through the module: tests swap it
                    count += 1
    count += wake_due(now=now, limit=limit)
    if judge_leases:
        count += expire_leases(now=now, limit=limit)
    count += recover_lost_follow_ups(now=now, limit=limit)
    return count


def messages_waiting() -> int | None:
    """Step messages waiting in the Celery queues (None: Redis cannot say)."""
    from workflows.runs.step_queues import step_queues

    lengths = list(queue_lengths(step_queues()).values())
    return None if None in lengths else sum(lengths)


def recover_lost_follow_ups(*, now, limit: int = 500) -> int:
    """Do what a lost `run_finished` message would have done. It is sent after commit; if
    Redis was away then, or it died with its worker node (then Redis gives it back only
    after the visibility timeout), a parent step would wait for a finished child forever
    and queued runs would never start. Both match only when that work was lost for a
    while, and both are fenced (the parent on its WAITING status, admission by locks)."""
    settled = now - REENQUEUE_AFTER
    recovered = 0
    orphaned = StepRun.objects.filter(
        status=StepStatus.WAITING,
        child_runs__status__in=TERMINAL_RUN,
        child_runs__finished_at__lt=settled,
    ).values_list("child_runs", flat=True)
    for child_run_id in list(orphaned[:limit]):
        recovered += child_finished(child_run_id=child_run_id)
    # Nothing of the workflow runs, yet a run has waited long to start: no finishing run
    # is left to admit it.
    stalled = (
        Run.objects.filter(status=RunStatus.QUEUED, created_at__lt=settled)
        .exclude(workflow__runs__status=RunStatus.RUNNING)
        .values_list("workflow_id", flat=True)
        .distinct()
    )
    for workflow_id in list(stalled[:limit]):
        recovered += admit_queued(workflow_id=workflow_id)
    return recovered


def expire_leases(*, now, limit: int = 500) -> int:
    """Fail (retryably) the running attempts presumed lost, so their retry can run: those
    whose worker stopped heartbeating (code `timeout.heartbeat`), and those that outlived their
    step's timeout plus LEASE_GRACE although their worker still beats — a hung step — or
    that have no heartbeat at all, from before heartbeats (code `timeout`). A late result
    from either is fenced out by record_result."""
    expired = 0
    silence = step_heartbeats.timeout()
    running = StepRun.objects.filter(status=StepStatus.RUNNING)
    lost = running.filter(heartbeat_at__lt=now - silence).order_by("heartbeat_at")
    for stale in lost.only("run", "step_id", "attempt", "worker", "heartbeat_at")[:limit]:
        quiet = (now - stale.heartbeat_at).total_seconds()
        error = (
            f"worker {stale.worker or '(unknown)'} stopped heartbeating (last beat {quiet:.0f}s "
            f"ago, limit {silence.total_seconds():g}s); the attempt is presumed lost"
        )
        if record_result(
            step_run_id=stale.pk,
            happening=engine.StepFinished(
                stale.step_id,
                stale.attempt,
                succeeded=False,
                retryable=True,
                error=error,
                code="timeout.heartbeat",
            ),
        ):
            log.warning("step %s of run %s: %s", stale.step_id, stale.run_id, error)
            expired += 1
    overdue = (
        running.filter(started_at__lt=now - LEASE_GRACE)
        .filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__gte=now - silence))
        .order_by("started_at")
        .select_related("run__version")
    )
    for stale in overdue[:limit]:
        step = definition_for(stale.run.version).steps.get(stale.step_id)
        timeout = (
            timedelta(seconds=step.timeout_seconds)
            if step and step.timeout_seconds
            else DEFAULT_STEP_TIMEOUT
        )
        if stale.started_at > now - timeout - LEASE_GRACE:
            continue
        expired += record_result(
            step_run_id=stale.pk,
            happening=engine.StepFinished(
                stale.step_id,
                stale.attempt,
                succeeded=False,
                retryable=True,
                error=f"attempt did not finish within {timeout.total_seconds():g}s "
                "(timed out or lost its worker)",
                code="timeout",
            ),
        )
    return expired
