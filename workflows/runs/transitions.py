"""The one writer of a step attempt's status.

Every status move of an attempt (the claim, a light step's result, a result, parking, a
wake-up, the lease sweep, a run's wind-down) is a row of `states.STEP_MOVES`, performed here
as one conditional UPDATE: `WHERE id = … AND status = source`. Zero rows means the attempt
is no longer where the caller believed (a duplicate delivery, a late result from a fenced-out
worker, a repeat): the caller must then do nothing. A move the table has no row for raises
`IllegalTransition` before any statement is sent.
"""

from __future__ import annotations

from collections.abc import Collection

from workflows.core.states import RunStatus, StepStatus, step_move
from workflows.runs.models import StepRun


def move_step(
    step_run_id: int,
    *,
    source: StepStatus,
    target: StepStatus,
    run_status_in: Collection[RunStatus] | None = None,
    **columns,
) -> bool:
    """Move the attempt from `source` to `target`, writing `columns` with it, in one UPDATE.
    `run_status_in`: also only while its run has one of these statuses (the claim: a run
    cancelled meanwhile starts nothing). True when the row moved."""
    step_move(source, target)
    rows = StepRun.objects.filter(pk=step_run_id, status=source)
    if run_status_in is not None:
        rows = rows.filter(run__status__in=run_status_in)
    return rows.update(status=target, **columns) == 1
