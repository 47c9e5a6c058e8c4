"""The engine core, without a database: `decide` and `backoff_delay` are pure functions."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflows.core.definition import RetryPolicy, parse
from workflows.core.engine import (
    FinishRun,
    MarkRunRunning,
    RunStarted,
    RunState,
    ScheduleStep,
    StepFinished,
    StepState,
    backoff_delay,
    decide,
)
from workflows.core.states import (
    TERMINAL_RUN,
    RunStatus,
    StepStatus,
    check_run_move,
    check_step_move,
)

# The engine only needs a kind's config schema; any config is valid for this stand-in.
KINDS = {"noop": SimpleNamespace(config_schema={"type": "object"})}
Q, R, OK, FAIL = StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED


def flow(*steps: tuple[str, tuple[str, ...]], retry: dict | None = None):
    """A parsed definition from (id, after) pairs; every step gets the same retry policy."""
    raw_steps = []
    for step_id, after in steps:
        step = {"id": step_id, "kind": "noop", "after": list(after)}
        if retry:
            step["retry"] = retry
        raw_steps.append(step)
    return parse({"name": "t", "triggers": [], "steps": raw_steps}, kinds=KINDS)


def state(status: RunStatus = RunStatus.RUNNING, **steps: tuple[StepStatus, int]) -> RunState:
    return RunState(
        run_id=7,
        status=status,
        steps={sid: StepState(st_, attempt) for sid, (st_, attempt) in steps.items()},
    )


CHAIN = flow(("a", ()), ("b", ("a",)), ("c", ("b",)))
# a and b start together; join waits for both; tail comes after the join.
DIAMOND = flow(("a", ()), ("b", ()), ("join", ("a", "b")), ("tail", ("join",)))
RETRYING = flow(
    ("call", ()),
    ("next", ("call",)),
    retry={
        "max_attempts": 3,
        "backoff": "fixed",
        "delay_seconds": 2,
        "jitter": False,
        "max_delay_seconds": 60,
    },
)


def won(step_id: str, attempt: int = 1) -> StepFinished:
    return StepFinished(step_id, attempt, succeeded=True)


def lost(step_id: str, attempt: int = 1, *, retryable: bool = False, **extra) -> StepFinished:
    return StepFinished(
        step_id, attempt, succeeded=False, retryable=retryable, error="boom", **extra
    )


DECISIONS = [
    pytest.param(
        CHAIN,
        state(RunStatus.QUEUED),
        RunStarted(),
        [MarkRunRunning(), ScheduleStep("a", 1)],
        id="run_started_marks_running_and_schedules_the_root",
    ),
    pytest.param(
        DIAMOND,
        state(RunStatus.QUEUED),
        RunStarted(),
        [MarkRunRunning(), ScheduleStep("a", 1), ScheduleStep("b", 1)],
        id="run_started_schedules_every_root_in_definition_order",
    ),
    pytest.param(
        CHAIN,
        state(RunStatus.RUNNING, a=(Q, 1)),
        RunStarted(),
        [],
        id="run_started_twice_does_nothing_the_second_time",
    ),
    pytest.param(
        CHAIN,
        state(a=(OK, 1)),
        won("a"),
        [ScheduleStep("b", 1)],
        id="a_success_schedules_its_successor",
    ),
    pytest.param(
        DIAMOND,
        state(a=(OK, 1), b=(R, 1)),
        won("a"),
        [],
        id="a_join_waits_while_one_of_its_predecessors_is_running",
    ),
    pytest.param(
        DIAMOND,
        state(a=(R, 1), b=(OK, 1)),
        won("b"),
        [],
        id="a_join_waits_whichever_predecessor_finishes_first",
    ),
    pytest.param(
        DIAMOND,
        state(a=(OK, 1), b=(OK, 1)),
        won("b"),
        [ScheduleStep("join", 1)],
        id="a_join_starts_once_all_its_predecessors_succeeded",
    ),
    pytest.param(
        CHAIN,
        state(a=(OK, 1), b=(OK, 1), c=(OK, 1)),
        won("c"),
        [FinishRun(RunStatus.SUCCEEDED)],
        id="the_last_success_finishes_the_run_succeeded",
    ),
    pytest.param(
        DIAMOND,
        state(a=(OK, 1), b=(OK, 1), join=(OK, 1), tail=(OK, 1)),
        won("tail"),
        [FinishRun(RunStatus.SUCCEEDED)],
        id="the_last_success_of_a_diamond_finishes_the_run",
    ),
    pytest.param(
        RETRYING,
        state(call=(FAIL, 1)),
        lost("call", retryable=True),
        [ScheduleStep("call", 2, 2.0)],
        id="a_retryable_failure_schedules_the_next_attempt_after_the_back_off",
    ),
    pytest.param(
        RETRYING,
        state(call=(FAIL, 2)),
        lost("call", 2, retryable=True),
        [ScheduleStep("call", 3, 2.0)],
        id="a_second_retryable_failure_schedules_the_third_attempt",
    ),
    pytest.param(
        CHAIN,
        state(RunStatus.SUCCEEDED, a=(OK, 1), b=(OK, 1), c=(OK, 1)),
        won("c"),
        [],
        id="a_succeeded_run_yields_no_commands",
    ),
    pytest.param(
        CHAIN,
        state(RunStatus.FAILED, a=(FAIL, 1)),
        lost("a"),
        [],
        id="a_failed_run_yields_no_commands",
    ),
    pytest.param(
        CHAIN,
        state(RunStatus.CANCELLED, a=(OK, 1)),
        won("a"),
        [],
        id="a_cancelled_run_does_not_schedule_successors",
    ),
    pytest.param(
        CHAIN,
        state(RunStatus.CANCELLED),
        RunStarted(),
        [],
        id="a_cancelled_run_does_not_start",
    ),
    pytest.param(
        RETRYING,
        state(call=(Q, 2)),
        lost("call", 1, retryable=True),
        [],
        id="a_stale_attempt_yields_no_commands",
    ),
    pytest.param(
        RETRYING,
        state(call=(Q, 2)),
        won("call", 1),
        [],
        id="a_stale_success_does_not_schedule_successors",
    ),
    pytest.param(
        CHAIN,
        state(a=(R, 1)),
        won("b"),
        [],
        id="a_result_for_a_step_that_never_started_yields_no_commands",
    ),
]


@pytest.mark.parametrize(("definition", "run", "happening", "expected"), DECISIONS)
def test_decide(definition, run, happening, expected):
    assert decide(definition, run, happening) == expected


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        pytest.param(10.0, 10.0, id="retry_after_longer_than_the_back_off_is_honoured"),
        pytest.param(0.5, 2.0, id="retry_after_shorter_than_the_back_off_keeps_the_back_off"),
        pytest.param(86400.0, 60.0, id="retry_after_is_capped_at_the_policy_maximum_delay"),
    ],
)
def test_a_retry_after_hint_is_weighed_against_the_back_off(retry_after, delay):
    happening = lost("call", retryable=True, retry_after=retry_after)

    assert decide(RETRYING, state(call=(FAIL, 1)), happening) == [ScheduleStep("call", 2, delay)]


@pytest.mark.parametrize(
    ("definition", "run", "happening", "attempts"),
    [
        pytest.param(CHAIN, state(a=(FAIL, 1)), lost("a"), 1, id="not_retryable"),
        pytest.param(
            RETRYING,
            state(call=(FAIL, 1)),
            lost("call"),
            1,
            id="not_retryable_despite_a_retry_policy",
        ),
        pytest.param(
            CHAIN,
            state(a=(FAIL, 1)),
            lost("a", retryable=True),
            1,
            id="retryable_but_only_one_attempt_allowed",
        ),
        pytest.param(
            RETRYING,
            state(call=(FAIL, 3)),
            lost("call", 3, retryable=True),
            3,
            id="retryable_but_attempts_exhausted",
        ),
    ],
)
def test_a_final_failure_fails_the_run_with_an_error_naming_the_step(
    definition, run, happening, attempts
):
    [command] = decide(definition, run, happening)

    assert isinstance(command, FinishRun)
    assert command.status == RunStatus.FAILED
    assert repr(happening.step_id) in command.error
    assert "boom" in command.error
    assert f"after {attempts} attempt" in command.error


def test_deciding_twice_on_the_same_input_returns_the_same_commands():
    policy = {"max_attempts": 5, "delay_seconds": 3, "jitter": True}
    definition = flow(("a", ()), retry=policy)
    run = state(a=(FAIL, 2))
    happening = lost("a", 2, retryable=True)

    first = decide(definition, run, happening)

    assert first == decide(definition, run, happening)
    assert first and isinstance(first[0], ScheduleStep) and first[0].attempt == 3


# --- backoff_delay ------------------------------------------------------------------------------
def test_fixed_back_off_waits_the_same_delay_on_every_attempt():
    policy = RetryPolicy(backoff="fixed", delay_seconds=4, jitter=False)

    assert [backoff_delay(policy, attempt=n, seed="s") for n in (1, 2, 3, 7)] == [4, 4, 4, 4]


def test_exponential_back_off_doubles_on_every_attempt():
    policy = RetryPolicy(backoff="exponential", delay_seconds=1.5, jitter=False)

    assert [backoff_delay(policy, attempt=n, seed="s") for n in (1, 2, 3, 4)] == [1.5, 3, 6, 12]


def test_exponential_back_off_is_capped_at_the_maximum_delay():
    policy = RetryPolicy(delay_seconds=1, max_delay_seconds=10, jitter=False)

    assert [backoff_delay(policy, attempt=n, seed="s") for n in (3, 4, 5, 40)] == [4, 8, 10, 10]


def test_fixed_back_off_is_capped_at_the_maximum_delay_too():
    policy = RetryPolicy(backoff="fixed", delay_seconds=100, max_delay_seconds=30, jitter=False)

    assert backoff_delay(policy, attempt=1, seed="s") == 30


def test_a_zero_delay_stays_zero_with_jitter():
    assert backoff_delay(RetryPolicy(delay_seconds=0, jitter=True), attempt=3, seed="s") == 0


def test_jitter_is_deterministic_for_the_same_seed_and_attempt():
    policy = RetryPolicy(delay_seconds=10, jitter=True)

    assert backoff_delay(policy, attempt=2, seed="7:call") == backoff_delay(
        policy, attempt=2, seed="7:call"
    )


def test_jitter_spreads_different_runs_apart():
    policy = RetryPolicy(delay_seconds=10, jitter=True)

    delays = {backoff_delay(policy, attempt=1, seed=f"{run}:call") for run in range(50)}

    assert len(delays) > 40


@given(
    seed=st.text(max_size=30),
    attempt=st.integers(min_value=1, max_value=30),
    delay=st.floats(min_value=0.01, max_value=1000),
    cap=st.floats(min_value=0.01, max_value=5000),
    backoff=st.sampled_from(["fixed", "exponential"]),
)
def test_jitter_keeps_the_delay_between_half_and_all_of_the_capped_delay(
    seed, attempt, delay, cap, backoff
):
    jittered = RetryPolicy(backoff=backoff, delay_seconds=delay, max_delay_seconds=cap)
    plain = replace(jittered, jitter=False)

    full = backoff_delay(plain, attempt=attempt, seed=seed)
    got = backoff_delay(jittered, attempt=attempt, seed=seed)

    assert full <= cap + 0.001
    # Rounded to milliseconds, so allow one millisecond either side.
    assert full / 2 - 0.001 <= got <= full + 0.001


# --- the run state machine, simulated -----------------------------------------------------------
@st.composite
def dags(draw):
    """A random definition whose `after` lists only name earlier steps (so it is acyclic)."""
    count = draw(st.integers(min_value=1, max_value=7))
    steps = []
    for index in range(count):
        after = draw(st.lists(st.integers(0, index - 1), unique=True, max_size=3)) if index else []
        steps.append(
            {
                "id": f"s{index}",
                "kind": "noop",
                "after": [f"s{i}" for i in after],
                "retry": {
                    "max_attempts": draw(st.integers(min_value=1, max_value=4)),
                    "backoff": draw(st.sampled_from(["fixed", "exponential"])),
                    "delay_seconds": draw(st.sampled_from([0, 0.5, 2])),
                    "max_delay_seconds": 30,
                },
            }
        )
    return parse({"name": "random", "triggers": [], "steps": steps}, kinds=KINDS)


class Simulation:
    """Applies the engine's commands to a run the way the services do, checking every move
    against the table in workflows/core/states.py."""

    def __init__(self, definition):
        self.definition = definition
        self.run = RunState(run_id=1, status=RunStatus.QUEUED, steps={})
        self.finishes: list[FinishRun] = []
        self.history: list[tuple[str, int]] = []

    def set_step(self, step_id: str, new: StepState) -> None:
        self.run = replace(self.run, steps={**self.run.steps, step_id: new})

    def move_step(self, step_id: str, status: StepStatus) -> None:
        current = self.run.steps[step_id]
        assert check_step_move(current.status, status), (step_id, current.status, status)
        self.set_step(step_id, replace(current, status=status))

    def apply(self, happening, commands) -> None:
        for command in commands:
            assert self.run.status not in TERMINAL_RUN, f"{command} after the run finished"
            if isinstance(command, MarkRunRunning):
                assert isinstance(happening, RunStarted)
                assert check_run_move(self.run.status, RunStatus.RUNNING)
                self.run = replace(self.run, status=RunStatus.RUNNING)
            elif isinstance(command, ScheduleStep):
                self.schedule(command)
            elif isinstance(command, FinishRun):
                assert check_run_move(self.run.status, command.status)
                self.run = replace(self.run, status=command.status)
                self.finishes.append(command)
            else:  # pragma: no cover - a new command needs a rule here
                raise AssertionError(f"unknown command {command!r}")

    def schedule(self, command: ScheduleStep) -> None:
        step = self.definition.steps[command.step_id]
        for dep in step.after:
            dep_state = self.run.steps.get(dep)
            assert dep_state and dep_state.status == StepStatus.SUCCEEDED, (
                f"{step.id} scheduled before {dep} succeeded"
            )
        previous = self.run.steps.get(step.id)
        if previous is None:
            assert command.attempt == 1
        else:
            # A retry is a new attempt of a failed one, never a second copy of a live one.
            assert previous.status == StepStatus.FAILED
            assert command.attempt == previous.attempt + 1
        assert 1 <= command.attempt <= step.retry.max_attempts
        assert 0 <= command.delay_seconds <= step.retry.max_delay_seconds
        self.set_step(step.id, StepState(StepStatus.QUEUED, command.attempt))
        self.history.append((step.id, command.attempt))

    def decide_and_apply(self, happening) -> list:
        commands = decide(self.definition, self.run, happening)
        self.apply(happening, commands)
        # A repeat of the same happening, once its commands are carried out, changes nothing.
        assert decide(self.definition, self.run, happening) == []
        return commands


OUTCOMES = st.sampled_from(["succeed", "succeed", "succeed", "retryable", "fatal"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=dags(), data=st.data())
def test_the_run_state_machine_only_makes_legal_moves_and_ends_exactly_once(definition, data):
    sim = Simulation(definition)
    sim.decide_and_apply(RunStarted())
    assert sim.run.status == RunStatus.RUNNING
    finished_attempts: list[StepFinished] = []

    for _ in range(200):
        live = sorted(sid for sid, s in sim.run.steps.items() if s.status == StepStatus.QUEUED)
        if not live:
            break
        step_id = data.draw(st.sampled_from(live), label="step")
        attempt = sim.run.steps[step_id].attempt
        outcome = data.draw(OUTCOMES, label=f"{step_id}#{attempt}")
        retry_after = data.draw(st.none() | st.floats(0, 100_000), label="retry_after")
        sim.move_step(step_id, StepStatus.RUNNING)
        if outcome == "succeed":
            sim.move_step(step_id, StepStatus.SUCCEEDED)
            happening = StepFinished(step_id, attempt, succeeded=True)
        else:
            sim.move_step(step_id, StepStatus.FAILED)
            happening = StepFinished(
                step_id,
                attempt,
                succeeded=False,
                retryable=outcome == "retryable",
                error="boom",
                retry_after=retry_after,
            )
        was_terminal = sim.run.status in TERMINAL_RUN
        commands = sim.decide_and_apply(happening)
        if was_terminal:
            assert commands == [], "a finished run must not act on late results"
        finished_attempts.append(happening)
        if data.draw(st.booleans(), label="redeliver an old result"):
            # At-least-once delivery: an old attempt's result arrives again.
            old = data.draw(st.sampled_from(finished_attempts), label="old result")
            assert decide(definition, sim.run, old) == []
    else:  # pragma: no cover
        raise AssertionError("the simulation did not settle")

    assert len(sim.finishes) == 1, sim.finishes
    assert sim.run.status in TERMINAL_RUN
    if sim.run.status == RunStatus.SUCCEEDED:
        assert set(sim.run.steps) == set(definition.steps)
        assert all(s.status == StepStatus.SUCCEEDED for s in sim.run.steps.values())
    else:
        assert sim.run.status == RunStatus.FAILED
        failed = [sid for sid, s in sim.run.steps.items() if s.status == StepStatus.FAILED]
        assert any(repr(sid) in sim.finishes[0].error for sid in failed)
    for step_id, attempt in sim.history:
        assert attempt <= definition.steps[step_id].retry.max_attempts
