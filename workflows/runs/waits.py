"""Steps that wait without holding a worker: timers, event waiters and child runs.

A parked attempt is WAITING in the database with a `wake_at` (a delay's end, or a wait's
timeout); the scheduler wakes due ones, the bus consumer hands arriving events to waiters,
and a finished child run resumes its parent. Each resumption goes through `record_result`,
fenced on the WAITING status, so it happens once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from workflows.catalog.definition_parsing import definition_for
from workflows.catalog.models import Workflow
from workflows.core import engine
from workflows.core.expressions import ExpressionError, evaluate
from workflows.core.states import StepStatus
from workflows.events.envelope import Envelope, to_structured
from workflows.events.intake import ingest_event
from workflows.events.models import Event
from workflows.infra import tracing
from workflows.live import notify
from workflows.runs.advance import advance_locked, journal, record_result
from workflows.runs.models import EventWaiter, Run, StepRun
from workflows.runs.producers import (
    DEPTH_EXTENSION,
    TRACEPARENT,
    WORKFLOW_EXTENSION,
    causation_depth,
    valid_traceparent,
)
from workflows.runs.transitions import move_step
from workflows.steps.base import StepContext, Wait

log = logging.getLogger("signalbox.waits")


def park(*, step_run: StepRun, wait: Wait, output, context: StepContext) -> bool:
    """Move a running attempt to WAITING and record what it waits for."""
    now = timezone.now()
    with transaction.atomic():
        # Lock the run: parking and the run's other moves must not interleave.
        run = (
            Run.objects.select_for_update(of=("self",))
            .select_related("workflow", "version", "event")
            .get(pk=step_run.run_id)
        )
        wake_at = None
        if wait.kind == "timer":
            wake_at = wait.until
        elif wait.timeout_seconds is not None:
            wake_at = now + timedelta(seconds=wait.timeout_seconds)
        moved = move_step(
            step_run.pk,
            source=StepStatus.RUNNING,
            target=StepStatus.WAITING,
            wake_at=wake_at,
            output=output,
        )
        if not moved:
            return False
        if wait.kind == "event":
            EventWaiter.objects.create(
                step_run=step_run,
                run=run,
                event_type=wait.event_type,
                match=wait.match or "true",
                # The match reads the arriving `event`, and this run's `trigger` event,
                # `run`, `steps` and `vars` (snapshot taken now; secrets never stored).
                scope={
                    "trigger": context.event,
                    "run": context.run,
                    "steps": context.steps,
                    "vars": context.vars,
                },
                expires_at=wake_at,
            )
        journal(
            run,
            "step.waiting",
            step=step_run.step_id,
            attempt=step_run.attempt,
            wait=wait.kind,
            wake_at=wake_at.isoformat() if wake_at else None,
            event_type=wait.event_type,
            workflow=wait.workflow,
            output=output,
        )
        run.save(update_fields=["seq"])
        notify.run_changed(
            run_id=run.pk, seq=run.seq, workflow_slug=run.workflow.slug, status=run.status
        )
        if wait.kind == "child":
            error = start_child_run(
                parent=run, step_run=step_run, slug=wait.workflow, data=wait.input
            )
            if error:
                transaction.on_commit(lambda: _fail_waiting(step_run.pk, error))
    return True


def _fail_waiting(step_run_id: int, error: str) -> None:
    step_run = StepRun.objects.get(pk=step_run_id)
    record_result(
        step_run_id=step_run_id,
        happening=engine.StepFinished(
            step_run.step_id, step_run.attempt, succeeded=False, error=error, code="sub_workflow"
        ),
        from_status=StepStatus.WAITING,
    )


def start_child_run(*, parent: Run, step_run: StepRun, slug: str, data) -> str | None:
    """Start the published version of workflow `slug` as a child of this attempt. Its
    trigger event carries the input; its id is the attempt's, so a retry starts no twin."""
    workflow = Workflow.objects.select_related("published_version").filter(slug=slug).first()
    if workflow is None or workflow.published_version is None:
        return f"sub_workflow {slug!r} does not exist or has no published version"
    envelope = Envelope(
        id=f"{step_run.idempotency_key}-{step_run.attempt}",
        source=f"/signalbox/runs/{parent.pk}",
        type=f"signalbox.subworkflow.{slug}",
        subject=slug,
        time=timezone.now(),
        datacontenttype="application/json",
        data=data,
        extensions=_caused_by(parent),
    )
    event, _created = ingest_event(envelope=envelope, channel="run")
    child, created = Run.objects.get_or_create(
        event=event,
        workflow=workflow,
        defaults={
            "version": workflow.published_version,
            "parent_step": step_run,
            "correlation_id": parent.correlation_id,
            "origin": "child",
        },
    )
    if created:
        advance_locked(child, engine.RunStarted())
    return None


def _caused_by(run: Run) -> dict:
    """The extensions of an event this run emits (emit_event, a sub_workflow's trigger):
    its conversation, its cause, its depth, and its workflow (`sbworkflow`, which the event
    store's team visibility reads; see workflows.queries.events.hidden_events)."""
    trigger = run.event
    extensions = {
        "correlationid": run.correlation_id or (trigger.correlation_id if trigger else ""),
        DEPTH_EXTENSION: (causation_depth(trigger) if trigger else 0) + 1,
        WORKFLOW_EXTENSION: run.workflow.slug,
    }
    if trigger is not None:
        extensions["causationid"] = trigger.ce_id
        traceparent = (trigger.extensions or {}).get(TRACEPARENT)
        if valid_traceparent(traceparent):
            extensions[TRACEPARENT] = traceparent
    # Tracing on: the span emitting it (an emit_event's, in its attempt's), so the events
    # it causes continue that trace below the step; off, the trigger's context passed on.
    extensions[TRACEPARENT] = tracing.current_traceparent() or extensions.get(TRACEPARENT)
    return {k: v for k, v in extensions.items() if v not in ("", None)}


def run_output(run: Run):
    """A finished run's result: the output of its last steps (those nothing follows)."""
    definition = definition_for(run.version)
    leaves = [s for s in definition.steps if not definition.outgoing(s)]
    outputs = {
        s.step_id: s.output
        for s in run.steps.filter(step_id__in=leaves, status=StepStatus.SUCCEEDED)
    }
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    return outputs


def child_finished(*, child_run_id: int) -> bool:
    """Resume the parent attempt of a finished child run (called after the child commits)."""
    child = Run.objects.select_related("parent_step", "version").get(pk=child_run_id)
    parent_step = child.parent_step
    if parent_step is None:
        return False
    succeeded = child.status == "succeeded"
    return record_result(
        step_run_id=parent_step.pk,
        happening=engine.StepFinished(
            parent_step.step_id,
            parent_step.attempt,
            succeeded=succeeded,
            error="" if succeeded else f"sub_workflow run {child.pk} {child.status}: {child.error}",
            code="" if succeeded else "sub_workflow",
        ),
        output={
            "run": child.pk,
            "status": child.status,
            "output": run_output(child) if succeeded else None,
        },
        from_status=StepStatus.WAITING,
    )


def deliver_to_waiters(event: Event) -> int:
    """Resume every waiting step whose wait this event matches. Returns how many."""
    now = timezone.now()
    waiters = list(
        EventWaiter.objects.filter(event_type=event.type, expires_at__gt=now).select_related(
            "step_run"
        )
    )
    if not waiters:
        return 0
    structured = to_structured(event)
    resumed = 0
    for waiter in waiters:
        try:
            matched = evaluate(
                waiter.match,
                {**waiter.scope, "event": structured},
                where=f"wait_for_event of run {waiter.run_id}",
            )
        except ExpressionError as exc:
            log.warning("%s", exc)
            continue
        if matched is not True:
            continue
        step_run = waiter.step_run
        done = record_result(
            step_run_id=step_run.pk,
            happening=engine.StepFinished(
                step_run.step_id, step_run.attempt, succeeded=True, port="success"
            ),
            output=structured,
            from_status=StepStatus.WAITING,
        )
        if done:
            EventWaiter.objects.filter(pk=waiter.pk).delete()
            resumed += 1
    return resumed


def wake_due(*, now=None, limit: int = 500) -> int:
    """The scheduler's timer sweep for waiting attempts: a delay ends, a wait times out."""
    now = now or timezone.now()
    woken = 0
    due = StepRun.objects.filter(status=StepStatus.WAITING, wake_at__lte=now).select_related(
        "waiter"
    )[:limit]
    for step_run in due:
        waiter = getattr(step_run, "waiter", None)
        if waiter is not None or step_run.kind == "wait_for_event":
            happening = engine.StepFinished(
                step_run.step_id, step_run.attempt, succeeded=True, port="timeout"
            )
            output = {"timed_out": True}
        elif step_run.kind == "delay":
            happening = engine.StepFinished(step_run.step_id, step_run.attempt, succeeded=True)
            output = step_run.output
        else:
            happening = engine.StepFinished(
                step_run.step_id,
                step_run.attempt,
                succeeded=False,
                retryable=True,
                error="timed out while waiting",
                code="timeout",
            )
            output = None
        if record_result(
            step_run_id=step_run.pk,
            happening=happening,
            output=output,
            from_status=StepStatus.WAITING,
        ):
            EventWaiter.objects.filter(step_run=step_run).delete()
            woken += 1
    return woken


def outgoing_event(*, run: Run, step_run: StepRun, config: dict) -> Envelope:
    """The CloudEvent a step sends (emit_event, publish), caused by its run. Its id is the
    attempt's idempotency key, so a retried step sends no second event."""
    extensions = _caused_by(run)
    if config.get("partitionkey"):
        extensions["partitionkey"] = config["partitionkey"]
    return Envelope(
        id=step_run.idempotency_key,
        # A replay that keeps its original's keys names the original run: same source and
        # id, so the event store (and receivers that dedupe by id) see one event.
        source=config.get("source") or f"/signalbox/runs/{run.idempotency_base or run.pk}",
        type=config["type"],
        subject=config.get("subject", ""),
        time=timezone.now(),
        datacontenttype="application/json",
        data=config.get("data"),
        extensions=extensions,
    )


def emit_for_step(*, run: Run, step_run: StepRun, config: dict) -> dict:
    """The emit_event step's effect: ingest the CloudEvent the step sends."""
    envelope = outgoing_event(run=run, step_run=step_run, config=config)
    event, created = ingest_event(envelope=envelope, channel="run")
    return {"id": event.pk, "ce_id": event.ce_id, "type": event.type, "duplicate": not created}
