"""Execute one step attempt in a worker: claim it, build its context, run the kind outside
any transaction, then record the result (or park the step if it asked to wait)."""

from __future__ import annotations

import logging
import os
import socket

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import engine
from ..definition import Step
from ..events.envelope import to_structured
from ..expressions import ExpressionError, render_value
from ..models import Run, StepRun
from ..states import RunStatus, StepStatus
from ..steps import registry
from ..steps.base import StepContext, StepError, StepResult
from .definitions import definition_for
from .item_checkpoints import StepItemCheckpoints, inherited_runs
from .replay import recorded_result, side_effecting
from .runs import lock_run, mark_started, record_result
from .secrets import mask, secret_values
from .step_heartbeats import heartbeating
from .waits import emit_for_step, park

log = logging.getLogger("signalbox.runs")
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


def claim(step_run_id: int, worker: str) -> bool:
    """Take the attempt with a conditional UPDATE: 0 rows means a duplicate delivery, a
    stale attempt or a finished run, and the caller must do nothing. The claim is the
    attempt's first heartbeat (a worker dying before the next one is still noticed)."""
    now = timezone.now()
    return bool(
        StepRun.objects.filter(
            pk=step_run_id,
            status=StepStatus.QUEUED,
            run__status__in=[RunStatus.QUEUED, RunStatus.RUNNING],
        ).update(status=StepStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker)
    )


def run_data(run: Run) -> dict:
    return {
        "id": run.pk,
        "workflow": run.workflow.slug,
        "version": run.version.number,
        "correlation_id": run.correlation_id,
        "started_at": run.started_at.isoformat() if run.started_at else None,
    }


def trigger_event(run: Run) -> dict:
    """The run's triggering event as steps see it; a replay with edited input sees the
    edited data (the stored event itself never changes)."""
    event = to_structured(run.event) if run.event else {}
    if run.input_override is not None:
        event = {**event, "data": run.input_override}
        event.pop("data_base64", None)
    return event


def build_context(run: Run, step: Step, step_run: StepRun, secrets: dict[str, str]) -> StepContext:
    upstream = {
        s.step_id: {"output": s.output, "port": s.port}
        for s in run.steps.filter(status=StepStatus.SUCCEEDED).only(
            "run_id", "step_id", "output", "port"
        )
    }
    return StepContext(
        run_id=run.pk,
        step_id=step.id,
        attempt=step_run.attempt,
        idempotency_key=step_run.idempotency_key,
        event=trigger_event(run),
        steps=upstream,
        outbound_allow=settings.SIGNALBOX_OUTBOUND_ALLOW,
        vars=definition_for(run.version).vars,
        secrets=secrets,
        run=run_data(run),
        emit=lambda config: emit_for_step(run=run, step_run=step_run, config=config),
        checkpoints=StepItemCheckpoints(
            run_id=run.pk,
            step_id=step.id,
            attempt=step_run.attempt,
            secrets=secrets,
            inherited=inherited_runs(run, step.id) if step.kind == "for_each" else (),
        ),
    )


def execute_step(*, step_run_id: int, worker: str = WORKER_NAME) -> bool:
    """Run one attempt. Returns False when the attempt was not ours to run."""
    run_id = StepRun.objects.filter(pk=step_run_id).values_list("run_id", flat=True).first()
    if run_id is None:
        return False
    with transaction.atomic():
        # The claim and its `step.started` entry commit together (a worker killed between
        # them would leave a running row the journal never heard of). The run is locked
        # first, in the order record_result and the run's wind-down take their locks.
        lock_run(run_id)
        if not claim(step_run_id, worker):
            return False
        step_run = StepRun.objects.select_related(
            "run__version", "run__event", "run__workflow"
        ).get(pk=step_run_id)
        mark_started(step_run=step_run)
    run = step_run.run
    step = definition_for(run.version).steps[step_run.step_id]
    kind = registry.get(step.kind)
    secrets = secret_values()
    context = build_context(run, step, step_run, secrets)
    config = dict(step.config)
    happening: engine.StepFinished
    output = None
    rendered = config
    try:
        # Expression fields are evaluated by the kind; every other `{{ … }}` is rendered now.
        expression_keys = {path.split("/")[1] for path, _ in kind.expressions(config)}
        expression_keys.update(kind.raw_fields)
        rendered = {
            key: value
            if key in expression_keys
            else render_value(value, context.expression_context(), where=f"step {step.id} /{key}")
            for key, value in config.items()
        }
        if run.origin == "shadow" and side_effecting(step):
            # A shadow run never acts on the world: the original run's recorded result.
            result = recorded_result(run=run, step_id=step.id)
        else:
            # The only part that may take long: the worker says it is alive meanwhile.
            with heartbeating(step_run.pk):
                result = kind.execute(rendered, context)
        if not isinstance(result, StepResult):
            result = StepResult(output=result)
        if result.wait is not None:
            park(
                step_run=step_run,
                wait=result.wait,
                output=mask(result.output, secrets),
                context=context,
            )
            return True
        output = result.output
        happening = engine.StepFinished(step.id, step_run.attempt, succeeded=True, port=result.port)
    except ExpressionError as exc:
        happening = engine.StepFinished(
            step.id, step_run.attempt, succeeded=False, error=str(exc), code="expression"
        )
    except StepError as exc:
        happening = engine.StepFinished(
            step.id,
            step_run.attempt,
            succeeded=False,
            retryable=exc.retryable,
            error=str(exc),
            retry_after=exc.retry_after,
            code=exc.code,
        )
    except Exception as exc:  # a bug in a step must fail the attempt, not the worker
        log.exception("step %s of run %s raised", step.id, run.pk)
        happening = engine.StepFinished(
            step.id,
            step_run.attempt,
            succeeded=False,
            error=f"{type(exc).__name__}: {exc}",
            code="crash",
        )
    record_result(
        step_run_id=step_run.pk,
        happening=mask_happening(happening, secrets),
        output=mask(output, secrets),
        input_=mask({"config": rendered, "event_id": run.event_id}, secrets),
    )
    return True


def mask_happening(happening: engine.StepFinished, secrets: dict[str, str]) -> engine.StepFinished:
    if not happening.error:
        return happening
    from dataclasses import replace

    return replace(happening, error=mask(happening.error, secrets))
