"""Starting, queueing and cancelling runs: per-workflow concurrency and per-key order."""

from __future__ import annotations

import logging

from django.db import transaction

from workflows.access import audit
from workflows.catalog.definition_parsing import definition_for
from workflows.catalog.models import Workflow
from workflows.core import engine
from workflows.core.states import TERMINAL_RUN, RunStatus
from workflows.runs.advance import Continuation, advance_locked, advance_run, journal, lock_run
from workflows.runs.models import Run
from workflows.runs.waits import child_finished

log = logging.getLogger("signalbox.runs")
ADMIT_BATCH = 200


def admit(
    run: Run,
    *,
    continuation: Continuation | None = None,
    state: engine.RunState | None = None,
) -> bool:
    """Start a queued run if its workflow's limits allow it now; else it stays queued and
    is started when a run of the workflow finishes. Call inside a transaction. With a
    `continuation`, a first step that is light is kept there for the caller to run;
    `state`: the run's, when the caller knows it (a run created in this transaction)."""
    concurrency = definition_for(run.version).concurrency
    if concurrency.max_runs or concurrency.ordered:
        # Lock the workflow row so two consumers admitting at once cannot both take the
        # last free slot (or both start the next run of one key).
        Workflow.objects.select_for_update().filter(pk=run.workflow_id).first()
        active = (
            Run.objects.filter(workflow_id=run.workflow_id)
            .exclude(status__in=TERMINAL_RUN)
            .exclude(pk=run.pk)
            .exclude(origin="shadow")  # a shadow run takes no slot (nor key) from real runs
        )
        if concurrency.max_runs and active.filter(status=RunStatus.RUNNING).count() >= (
            concurrency.max_runs
        ):
            return False
        if (
            concurrency.ordered
            and active.filter(partition_key=run.partition_key, pk__lt=run.pk).exists()
        ):
            return False
    advance_locked(run, engine.RunStarted(), continuation=continuation, state=state)
    return True


def admit_queued(*, workflow_id: int) -> int:
    started = 0
    queued = Run.objects.filter(workflow_id=workflow_id, status=RunStatus.QUEUED).order_by("id")
    for run_id in list(queued.values_list("pk", flat=True)[:ADMIT_BATCH]):
        with transaction.atomic():
            run = lock_run(run_id)
            if run.status == RunStatus.QUEUED and admit(run):
                started += 1
    return started


def after_run_finished(*, run_id: int) -> None:
    """Runs after a run's final state is committed (a Celery task)."""
    run = Run.objects.get(pk=run_id)
    if run.parent_step_id:
        child_finished(child_run_id=run.pk)
    if run.status == RunStatus.CANCELLED:
        for child_id in (
            Run.objects.filter(parent_step__run=run)
            .exclude(status__in=TERMINAL_RUN)
            .values_list("pk", flat=True)
        ):
            cancel_run(run_id=child_id, reason=f"parent run {run.pk} was cancelled")
    admit_queued(workflow_id=run.workflow_id)


def cancel_run(*, run_id: int, reason: str = "", by: str = "") -> bool:
    """Cancel a queued, running or waiting run: pending steps never start, waits are
    dropped, child runs are cancelled. False when the run had already finished."""
    with transaction.atomic():
        run = lock_run(run_id)
        if run.status in TERMINAL_RUN:
            return False
        journal(run, "run.cancel_requested", by=by, reason=reason)
        if by:  # a person (or their token) cancelled it; cascades to children are not
            audit.record(
                actor=by,
                action="run.cancel",
                target_type="run",
                target_id=run.pk,
                reason=reason,
                details={"status": run.status},
            )
        return bool(
            advance_locked(run, engine.CancelRequested(reason=reason or f"cancelled by {by}"))
        )


__all__ = ["admit", "admit_queued", "advance_run", "after_run_finished", "cancel_run"]
