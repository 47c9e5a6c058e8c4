"""Status values and the one table of legal moves between them.

Pure Python: the engine, the services and the tests all read the same table. A terminal
status never changes; asking for the status a thing already has is a no-op, not an error.
"""

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

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.QUEUED: frozenset({StepStatus.RUNNING, StepStatus.SKIPPED, StepStatus.FAILED}),
    StepStatus.RUNNING: frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.WAITING}),
    StepStatus.WAITING: frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED}),
    StepStatus.SUCCEEDED: frozenset(),
    StepStatus.FAILED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
}

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
    if StepStatus(new) not in STEP_TRANSITIONS[StepStatus(current)]:
        raise IllegalTransition(f"step cannot go from {current} to {new}")
    return True


ACTIVE_STEP = frozenset({StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.WAITING})
