"""The engine: from a run's state and what just happened, decide what to do next.

Pure and deterministic: no Django, no Celery, no clock, no randomness of its own (jitter is
derived from the run, step and attempt). The services feed it state read from the database
and carry out the commands it returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .definition import Definition, RetryPolicy
from .states import TERMINAL_RUN, RunStatus, StepStatus


# --- state -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepState:
    status: StepStatus
    attempt: int  # of the latest attempt
    error: str = ""


@dataclass(frozen=True)
class RunState:
    run_id: int
    status: RunStatus
    steps: Mapping[str, StepState]  # latest attempt of every step that has one


# --- what happened -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunStarted:
    pass


@dataclass(frozen=True)
class StepFinished:
    step_id: str
    attempt: int
    succeeded: bool
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None  # seconds the step asked to wait (e.g. HTTP Retry-After)


Happening = RunStarted | StepFinished


# --- what to do --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarkRunRunning:
    pass


@dataclass(frozen=True)
class ScheduleStep:
    step_id: str
    attempt: int
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class FinishRun:
    status: RunStatus
    error: str = ""


Command = MarkRunRunning | ScheduleStep | FinishRun


def decide(definition: Definition, state: RunState, happening: Happening) -> list[Command]:
    """Return the commands that follow `happening`.

    `state` already includes the recorded result of `happening`. Deciding twice on the same
    input returns the same commands; a stale or repeated happening returns none.
    """
    if state.status in TERMINAL_RUN:
        return []
    if isinstance(happening, RunStarted):
        if state.status != RunStatus.QUEUED:
            return []
        ready = _ready_steps(definition, state)
        return [MarkRunRunning(), *(ready or [FinishRun(RunStatus.SUCCEEDED)])]
    return _on_step_finished(definition, state, happening)


def _on_step_finished(
    definition: Definition, state: RunState, happening: StepFinished
) -> list[Command]:
    current = state.steps.get(happening.step_id)
    if current is None or current.attempt != happening.attempt:
        return []  # a stale attempt: a newer one exists, or the step never started
    if happening.succeeded:
        ready = _ready_steps(definition, state)
        if ready:
            return ready
        if all(
            state.steps.get(s) and state.steps[s].status == StepStatus.SUCCEEDED
            for s in definition.steps
        ):
            return [FinishRun(RunStatus.SUCCEEDED)]
        return []
    step = definition.steps[happening.step_id]
    if happening.retryable and happening.attempt < step.retry.max_attempts:
        delay = backoff_delay(
            step.retry, attempt=happening.attempt, seed=f"{state.run_id}:{step.id}"
        )
        if happening.retry_after is not None:
            delay = max(delay, min(happening.retry_after, step.retry.max_delay_seconds))
        return [ScheduleStep(step.id, happening.attempt + 1, delay)]
    return [
        FinishRun(
            RunStatus.FAILED,
            error=f"step {step.id!r} failed after {happening.attempt} attempt(s): "
            f"{happening.error}",
        )
    ]


def _ready_steps(definition: Definition, state: RunState) -> list[Command]:
    """Steps not started yet whose predecessors have all succeeded."""
    done = {sid for sid, s in state.steps.items() if s.status == StepStatus.SUCCEEDED}
    return [
        ScheduleStep(step.id, 1)
        for step in definition.steps.values()
        if step.id not in state.steps and all(dep in done for dep in step.after)
    ]


def backoff_delay(policy: RetryPolicy, *, attempt: int, seed: str) -> float:
    """Seconds to wait before attempt `attempt + 1`; jitter is derived from `seed`."""
    if policy.backoff == "fixed":
        delay = policy.delay_seconds
    else:
        delay = policy.delay_seconds * (2 ** (attempt - 1))
    delay = min(delay, policy.max_delay_seconds)
    if policy.jitter and delay > 0:
        digest = hashlib.sha256(f"{seed}:{attempt}".encode()).digest()
        fraction = int.from_bytes(digest[:4], "big") / 2**32  # in [0, 1)
        delay = delay * (0.5 + fraction / 2)  # "equal jitter": between half and all of it
    return round(delay, 3)
