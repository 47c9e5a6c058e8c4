"""The engine: from a run's state and what just happened, decide what to do next.

Pure and deterministic: no Django, no Celery, no clock, no randomness of its own (jitter is
derived from the run, step and attempt). The services feed it state read from the database
and carry out the commands it returns.

Edges carry ports. A step runs when its incoming edges are resolved (their source steps
finished) and at least one of them is live (its source took that edge's port); when all are
resolved and none is live the step is skipped, and skipping flows on (dead-path
elimination), so the branch an if/else did not take never runs while a join after it still
does. With `join: first` a step starts on the first live edge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from workflows.core.definition import FAILURE, Definition, Edge, RetryPolicy
from workflows.core.states import ACTIVE_STEP, TERMINAL_RUN, RunStatus, StepStatus

DONE = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})


# --- state -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepState:
    status: StepStatus
    attempt: int  # of the latest attempt
    error: str = ""
    port: str = "success"  # the port a succeeded step took ("" when it took none)


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
    port: str = "success"
    code: str = ""  # error code for retry policies ("http.503", "network", "timeout", …)


@dataclass(frozen=True)
class CancelRequested:
    reason: str = ""


Happening = RunStarted | StepFinished | CancelRequested


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
class SkipStep:
    step_id: str


@dataclass(frozen=True)
class FinishRun:
    status: RunStatus
    error: str = ""


Command = MarkRunRunning | ScheduleStep | SkipStep | FinishRun


def decide(definition: Definition, state: RunState, happening: Happening) -> list[Command]:
    """Return the commands that follow `happening`.

    `state` already includes the recorded result of `happening`. Deciding twice on the same
    input returns the same commands; a stale or repeated happening returns none.
    """
    if state.status in TERMINAL_RUN:
        return []
    if isinstance(happening, CancelRequested):
        return [FinishRun(RunStatus.CANCELLED, error=happening.reason or "cancelled")]
    if isinstance(happening, RunStarted):
        if state.status != RunStatus.QUEUED:
            return []
        return [MarkRunRunning(), *_progress(definition, state)]
    return _on_step_finished(definition, state, happening)


def _on_step_finished(
    definition: Definition, state: RunState, happening: StepFinished
) -> list[Command]:
    current = state.steps.get(happening.step_id)
    if current is None or current.attempt != happening.attempt:
        return []  # a stale attempt: a newer one exists, or the step never started
    if not happening.succeeded:
        step = definition.steps[happening.step_id]
        policy = step.retry
        if happening.attempt < policy.max_attempts and policy.retries(
            retryable=happening.retryable, code=happening.code
        ):
            delay = backoff_delay(
                policy, attempt=happening.attempt, seed=f"{state.run_id}:{step.id}"
            )
            if happening.retry_after is not None:
                delay = max(delay, min(happening.retry_after, policy.max_delay_seconds))
            return [ScheduleStep(step.id, happening.attempt + 1, delay)]
        if not definition.handles_failure(step.id):
            return [
                FinishRun(
                    RunStatus.FAILED,
                    error=f"step {step.id!r} failed after {happening.attempt} attempt(s): "
                    f"{happening.error}",
                )
            ]
    return _progress(definition, state)


def _took(state: StepState, edge: Edge) -> bool:
    if state.status == StepStatus.SUCCEEDED:
        return state.port == edge.port
    return state.status == StepStatus.FAILED and edge.port == FAILURE


def _progress(definition: Definition, state: RunState) -> list[Command]:
    """Schedule the steps that became ready, skip the ones that never can run, and finish
    the run when nothing is left to do."""
    known: dict[str, StepState] = dict(state.steps)
    commands: list[Command] = []
    changed = True
    while changed:  # skipping one step can resolve the next: repeat until nothing moves
        changed = False
        for step in definition.steps.values():
            if step.id in known:
                continue
            incoming = definition.incoming(step.id)
            resolved = [e for e in incoming if e.source in known and known[e.source].status in DONE]
            live = [e for e in resolved if _took(known[e.source], e)]
            everything_in = len(resolved) == len(incoming)
            if not incoming or (live and (step.join == "first" or everything_in)):
                commands.append(ScheduleStep(step.id, 1))
                known[step.id] = StepState(StepStatus.QUEUED, 1)
                changed = True
            elif everything_in and not live:
                commands.append(SkipStep(step.id))
                known[step.id] = StepState(StepStatus.SKIPPED, 0, port="")
                changed = True
    if len(known) == len(definition.steps) and not any(
        s.status in ACTIVE_STEP for s in known.values()
    ):
        commands.append(FinishRun(RunStatus.SUCCEEDED))
    return commands


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
