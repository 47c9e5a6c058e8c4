"""Which steps act on the world, and what a shadow run answers in their place.

A shadow run (a draft tried against real past runs, see replay_runs.start_shadow_run) never
executes a side-effecting step: the worker asks `side_effecting`, and takes
`recorded_result`, the original run's recorded result of the same step, instead.
"""

from __future__ import annotations

from workflows.core.definition import Step
from workflows.core.states import StepStatus
from workflows.runs.models import Run, StepRun
from workflows.steps import registry
from workflows.steps.base import StepError, StepResult

# Kinds that start work elsewhere without being marked side-effecting themselves.
EFFECTFUL_CONTROL_KINDS = frozenset({"sub_workflow"})


def side_effecting(step: Step) -> bool:
    """True when running the step acts on the world (HTTP, email, emit, code, child runs)."""
    kinds = registry.all_kinds()
    kind = kinds.get(step.kind)
    if kind is None:
        return True  # unknown: assume the worst
    if kind.side_effects or step.kind in EFFECTFUL_CONTROL_KINDS:
        return True
    if step.kind == "for_each":
        inner = kinds.get(str((step.config.get("do") or {}).get("kind", "")))
        return inner is None or inner.side_effects or inner.name in EFFECTFUL_CONTROL_KINDS
    return False


# --- shadow runs -------------------------------------------------------------------------------
def recorded_result(*, run: Run, step_id: str) -> StepResult:
    """A shadow run's answer for a side-effecting step: what the same step did in the
    original run. Never executes anything; fails the step clearly when nothing is recorded."""
    original_id = run.replay_of_id
    recorded = (
        StepRun.objects.filter(run_id=original_id, step_id=step_id)
        .exclude(
            status__in=[
                StepStatus.QUEUED,
                StepStatus.RUNNING,
                StepStatus.WAITING,
                StepStatus.SKIPPED,
            ]
        )
        .order_by("-attempt", "-id")
        .first()
        if original_id
        else None
    )
    if recorded is None:
        raise StepError(
            f"shadow run: step {step_id!r} has side effects and the original run "
            f"{original_id} recorded no result for it, so it is not executed",
            code="shadow.unrecorded",
        )
    if recorded.status == StepStatus.FAILED:
        raise StepError(
            f"shadow run: the original run {original_id} recorded a failure: {recorded.error}",
            code=recorded.error_code or "shadow.failed",
        )
    return StepResult(output=recorded.output, port=recorded.port or "success")
