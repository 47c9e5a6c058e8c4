"""Status values and the one table of legal moves between them.

Pure Python: the engine, the services and the tests all read the same table. A terminal
status never changes; asking for the status a thing already has is a no-op, not an error.
"""

from dataclasses import dataclass
from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # parked on a timer, an event or a child run; holds no worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset(
        {RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class StepMove:
    """One row of the step table: an attempt may go from `source` to `target`, for `why`.
    `workflows/services/transitions.move_step` performs exactly these moves, each as one
    conditional UPDATE (`WHERE status = source`), so a stale or repeated move writes
    nothing."""

    source: StepStatus
    target: StepStatus
    why: str


# Every status move of a step attempt, and nothing else. Creating an attempt is not a move
# (it is born queued, or skipped/succeeded when the engine skips it or a replay reuses a
# recorded result), nor is rebuilding the rows from the journal (projections).
STEP_MOVES: tuple[StepMove, ...] = (
    StepMove(StepStatus.QUEUED, StepStatus.RUNNING, "a worker claims the attempt"),
    StepMove(
        StepStatus.QUEUED,
        StepStatus.SUCCEEDED,
        "a light step is claimed, run and recorded in one transaction",
    ),
    StepMove(StepStatus.QUEUED, StepStatus.FAILED, "a light step fails in that transaction"),
    StepMove(StepStatus.QUEUED, StepStatus.SKIPPED, "its run finished before it started"),
    StepMove(StepStatus.RUNNING, StepStatus.SUCCEEDED, "its worker recorded success"),
    StepMove(
        StepStatus.RUNNING,
        StepStatus.FAILED,
        "its worker recorded a failure, or the lease sweep presumed it lost",
    ),
    StepMove(
        StepStatus.RUNNING,
        StepStatus.WAITING,
        "it parked on a timer, an event or a child run",
    ),
    StepMove(
        StepStatus.WAITING,
        StepStatus.SUCCEEDED,
        "its timer ended, its event arrived, its wait timed out to the timeout port, or "
        "its child run succeeded",
    ),
    StepMove(
        StepStatus.WAITING,
        StepStatus.FAILED,
        "its wait timed out, its child run failed, or its run finished",
    ),
)

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    status: frozenset(m.target for m in STEP_MOVES if m.source == status) for status in StepStatus
}
_STEP_MOVES_BY_PAIR = {(m.source, m.target): m for m in STEP_MOVES}

TERMINAL_RUN = frozenset(s for s, nxt in RUN_TRANSITIONS.items() if not nxt)
TERMINAL_STEP = frozenset(s for s, nxt in STEP_TRANSITIONS.items() if not nxt)


class IllegalTransition(Exception):
    pass


def check_run_move(current: str, new: str) -> bool:
    """True when the move must be written, False when it is a repeat; raise when illegal."""
    if current == new:
        return False
    if RunStatus(new) not in RUN_TRANSITIONS[RunStatus(current)]:
        raise IllegalTransition(f"run cannot go from {current} to {new}")
    return True


def check_step_move(current: str, new: str) -> bool:
    if current == new:
        return False
    step_move(current, new)
    return True


def step_move(source: str, target: str) -> StepMove:
    """The table's row for moving an attempt from `source` to `target`; raise when there is
    none (a terminal status never changes; staying put is no move)."""
    move = _STEP_MOVES_BY_PAIR.get((StepStatus(source), StepStatus(target)))
    if move is None:
        raise IllegalTransition(f"step cannot go from {source} to {target}")
    return move


ACTIVE_STEP = frozenset({StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.WAITING})
