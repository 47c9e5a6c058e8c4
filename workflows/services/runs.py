"""Advance runs and execute their steps.

The rules: `advance_locked` holds the run's row lock while it asks the engine what to do and
writes the result; `execute_step` claims an attempt with a conditional UPDATE, runs the step
outside any transaction, and records the result under the run lock. Enqueueing and pushes
happen only after commit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import engine, notify
from ..events.envelope import to_structured
from ..models import DeadLetter, Run, RunJournal, StepRun
from ..states import RunStatus, StepStatus, check_run_move
from ..steps import registry
from ..steps.base import StepContext, StepError
from .definitions import definition_for

log = logging.getLogger("signalbox.runs")
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
# An attempt still "running" this long after it started lost its worker; it is failed
# (retryably) so the run moves on. A late result from it is fenced out.
ATTEMPT_LEASE = timedelta(minutes=15)
# A queued attempt whose message has not been picked up this long is enqueued again (the
# message was lost, e.g. Redis restarted). Duplicates are harmless: the claim is conditional.
REENQUEUE_AFTER = timedelta(seconds=120)


def idempotency_key(run_id: int, step_id: str) -> str:
    digest = hashlib.sha256(f"signalbox:run:{run_id}:step:{step_id}".encode()).hexdigest()
    return f"sb-{digest[:32]}"


def run_state(run: Run) -> engine.RunState:
    latest: dict[str, engine.StepState] = {}
    for step_id, status, attempt, error in run.steps.order_by("attempt", "id").values_list(
        "step_id", "status", "attempt", "error"
    ):
        latest[step_id] = engine.StepState(StepStatus(status), attempt, error)
    return engine.RunState(run_id=run.pk, status=RunStatus(run.status), steps=latest)


def journal(run: Run, kind: str, **data) -> None:
    """Append to the run's journal. Caller holds the run lock, so seq is gap-free."""
    run.seq += 1
    RunJournal.objects.create(run=run, seq=run.seq, kind=kind, data=data)


def advance_locked(run: Run, happening: engine.Happening) -> list[engine.Command]:
    """Ask the engine what follows `happening` and carry it out. The caller holds the run's
    row lock (or created the row in this transaction)."""
    definition = definition_for(run.version)
    commands = engine.decide(definition, run_state(run), happening)
    now = timezone.now()
    for command in commands:
        if isinstance(command, engine.MarkRunRunning):
            check_run_move(run.status, RunStatus.RUNNING)
            run.status, run.started_at = RunStatus.RUNNING, now
            journal(run, "run.started")
        elif isinstance(command, engine.ScheduleStep):
            _schedule_step(run, command, definition.steps[command.step_id].kind, now)
        elif isinstance(command, engine.FinishRun):
            check_run_move(run.status, command.status)
            run.status, run.finished_at, run.error = command.status, now, command.error
            journal(run, f"run.{command.status}", error=command.error)
            if command.status == RunStatus.FAILED and isinstance(happening, engine.StepFinished):
                _dead_letter_step(run, happening)
    if commands:
        run.save(update_fields=["status", "started_at", "finished_at", "error", "seq"])
        notify.run_changed(
            run_id=run.pk, seq=run.seq, workflow_slug=run.workflow.slug, status=run.status
        )
    return commands


def _schedule_step(run: Run, command: engine.ScheduleStep, kind: str, now) -> None:
    due_now = command.delay_seconds <= 0
    step_run = StepRun.objects.create(
        run=run,
        step_id=command.step_id,
        attempt=command.attempt,
        kind=kind,
        idempotency_key=idempotency_key(run.pk, command.step_id),
        not_before=None if due_now else now + timedelta(seconds=command.delay_seconds),
        enqueued_at=now if due_now else None,
    )
    journal(
        run,
        "step.scheduled",
        step=command.step_id,
        attempt=command.attempt,
        delay_seconds=command.delay_seconds,
    )
    if due_now:
        enqueue_on_commit(step_run.pk)


def enqueue_on_commit(step_run_id: int) -> None:
    from ..tasks import execute_step_task

    # robust: if Redis is down the row stays queued and the scheduler enqueues it again.
    transaction.on_commit(lambda: execute_step_task.delay(step_run_id), robust=True)


def _dead_letter_step(run: Run, happening: engine.StepFinished) -> None:
    DeadLetter.objects.create(
        kind="step",
        reason=happening.error or "step failed",
        run=run,
        step_id=happening.step_id,
        event_id=run.event_id,
        payload={
            "run": run.pk,
            "workflow": run.workflow_id,
            "version": run.version_id,
            "step": happening.step_id,
            "attempt": happening.attempt,
            "event": run.event_id,
        },
    )


def advance_run(*, run_id: int, happening: engine.Happening) -> list[engine.Command]:
    with transaction.atomic():
        # Lock the run: two steps finishing together must not both start their successor.
        run = Run.objects.select_for_update(of=("self",)).select_related("version", "workflow").get(pk=run_id)
        return advance_locked(run, happening)


def execute_step(*, step_run_id: int, worker: str = WORKER_NAME) -> bool:
    """Run one attempt. Returns False when the attempt was not ours to run (a duplicate
    delivery, a stale attempt, or a finished run)."""
    now = timezone.now()
    claimed = StepRun.objects.filter(
        pk=step_run_id,
        status=StepStatus.QUEUED,
        run__status__in=[RunStatus.QUEUED, RunStatus.RUNNING],
    ).update(status=StepStatus.RUNNING, started_at=now, worker=worker)
    if not claimed:
        return False
    step_run = StepRun.objects.select_related("run__version", "run__event").get(pk=step_run_id)
    run = step_run.run
    step = definition_for(run.version).steps[step_run.step_id]
    event = to_structured(run.event) if run.event else {}
    upstream = {
        s.step_id: {"output": s.output}
        for s in run.steps.filter(status=StepStatus.SUCCEEDED).only("step_id", "output")
    }
    context = StepContext(
        run_id=run.pk,
        step_id=step.id,
        attempt=step_run.attempt,
        idempotency_key=step_run.idempotency_key,
        event=event,
        steps=upstream,
        outbound_allow=settings.SIGNALBOX_OUTBOUND_ALLOW,
    )
    try:
        output = registry.get(step.kind).execute(step.config, context)
        happening = engine.StepFinished(step.id, step_run.attempt, succeeded=True)
        error = ""
    except StepError as exc:
        output, error = None, str(exc)
        happening = engine.StepFinished(
            step.id,
            step_run.attempt,
            succeeded=False,
            retryable=exc.retryable,
            error=error,
            retry_after=exc.retry_after,
        )
    except Exception as exc:  # a bug in a step must fail the attempt, not the worker
        log.exception("step %s of run %s raised", step.id, run.pk)
        output, error = None, f"{type(exc).__name__}: {exc}"
        happening = engine.StepFinished(step.id, step_run.attempt, succeeded=False, error=error)
    record_result(
        step_run_id=step_run.pk,
        happening=happening,
        output=output,
        input_={"config": dict(step.config), "event_id": run.event_id},
    )
    return True


def record_result(
    *, step_run_id: int, happening: engine.StepFinished, output=None, input_=None
) -> bool:
    """Write an attempt's result and advance its run, once. False if fenced out."""
    with transaction.atomic():
        step_run = StepRun.objects.only("run_id").get(pk=step_run_id)
        # Lock the run first: the result and the decision it leads to are one step.
        run = Run.objects.select_for_update(of=("self",)).select_related("version", "workflow").get(pk=step_run.run_id)
        status = StepStatus.SUCCEEDED if happening.succeeded else StepStatus.FAILED
        written = StepRun.objects.filter(pk=step_run_id, status=StepStatus.RUNNING).update(
            status=status,
            output=output,
            error=happening.error,
            retryable=happening.retryable,
            input=input_,
            finished_at=timezone.now(),
        )
        if not written:
            return False  # a late result of an attempt already decided (lease expired)
        journal(
            run,
            f"step.{status}",
            step=happening.step_id,
            attempt=happening.attempt,
            error=happening.error,
        )
        if not advance_locked(run, happening):
            # Nothing followed (e.g. a parallel branch is still running): still persist the
            # journal position and tell browsers the step moved.
            run.save(update_fields=["seq"])
            notify.run_changed(
                run_id=run.pk, seq=run.seq, workflow_slug=run.workflow.slug, status=run.status
            )
    return True


def enqueue_due_steps(*, now=None, limit: int = 500) -> int:
    """The scheduler's timer sweep: enqueue retries whose back-off has passed, re-enqueue
    attempts whose message was lost, and fail attempts whose worker vanished."""
    now = now or timezone.now()
    queued = StepRun.objects.filter(status=StepStatus.QUEUED)
    sweeps = [
        queued.filter(enqueued_at=None, not_before__lte=now),
        queued.filter(enqueued_at__lt=now - REENQUEUE_AFTER),
    ]
    count = 0
    for sweep in sweeps:
        for pk in list(sweep.values_list("pk", flat=True)[:limit]):
            # The same filter again as a conditional UPDATE: of two schedulers, one sends it.
            with transaction.atomic():
                if sweep.filter(pk=pk).update(enqueued_at=now):
                    enqueue_on_commit(pk)
                    count += 1
    for pk in StepRun.objects.filter(
        status=StepStatus.RUNNING, started_at__lt=now - ATTEMPT_LEASE
    ).values_list("pk", flat=True)[:limit]:
        stale = StepRun.objects.get(pk=pk)
        record_result(
            step_run_id=pk,
            happening=engine.StepFinished(
                stale.step_id,
                stale.attempt,
                succeeded=False,
                retryable=True,
                error="attempt lost its worker (lease expired)",
            ),
        )
    return count

