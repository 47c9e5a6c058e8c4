"""Every status move of a step attempt is a row of `states.STEP_MOVES`, performed by
`runs.transitions.move_step` as one conditional UPDATE; the tests walk the whole table."""

from __future__ import annotations

import ast
from itertools import product
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import definition, log_step
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.core.states import (
    STEP_MOVES,
    STEP_TRANSITIONS,
    TERMINAL_STEP,
    IllegalTransition,
    RunStatus,
    StepStatus,
)
from workflows.runs.models import Run, StepRun
from workflows.runs.transitions import move_step

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = sorted({(m.source, m.target) for m in STEP_MOVES})
REFUSED = sorted(set(product(StepStatus, StepStatus)) - set(ALLOWED))


@pytest.fixture
def attempt() -> StepRun:
    put_workflow(slug="moves", raw=definition(log_step("a")))
    version = publish_workflow(slug="moves")
    run = Run.objects.create(workflow=version.workflow, version=version, status="running")
    return StepRun.objects.create(run=run, step_id="a", kind="log")


def put(attempt: StepRun, status: StepStatus) -> None:
    StepRun.objects.filter(pk=attempt.pk).update(status=status)


def status_of(attempt: StepRun) -> str:
    return StepRun.objects.values_list("status", flat=True).get(pk=attempt.pk)


def test_the_table_has_every_move_the_services_make_and_no_way_out_of_a_terminal_status():
    assert {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED} == TERMINAL_STEP
    assert all(not STEP_TRANSITIONS[status] for status in TERMINAL_STEP)
    assert all(m.source != m.target and m.why for m in STEP_MOVES)
    assert len(ALLOWED) == len(STEP_MOVES) == 9  # one row per pair, none forgotten
    assert (StepStatus.QUEUED, StepStatus.SUCCEEDED) in ALLOWED  # the light path


@pytest.mark.parametrize(("source", "target"), ALLOWED)
def test_an_allowed_move_is_one_conditional_update_and_a_repeat_writes_nothing(
    attempt, source, target
):
    put(attempt, source)

    with CaptureQueriesContext(connection) as queries:
        assert move_step(attempt.pk, source=source, target=target, error="moved") is True

    assert [q["sql"].split()[0] for q in queries] == ["UPDATE"]
    row = StepRun.objects.get(pk=attempt.pk)
    assert (row.status, row.error) == (target, "moved")
    assert move_step(attempt.pk, source=source, target=target, error="again") is False
    assert StepRun.objects.get(pk=attempt.pk).error == "moved"


@pytest.mark.parametrize(("source", "target"), ALLOWED)
def test_an_allowed_move_is_fenced_out_when_the_attempt_is_no_longer_at_its_source(
    attempt, source, target
):
    for elsewhere in StepStatus:
        if elsewhere == source:
            continue
        put(attempt, elsewhere)

        assert move_step(attempt.pk, source=source, target=target) is False
        assert status_of(attempt) == elsewhere


@pytest.mark.parametrize(("source", "target"), REFUSED)
def test_a_move_the_table_lacks_is_refused_before_any_statement(attempt, source, target):
    put(attempt, source)

    with CaptureQueriesContext(connection) as queries, pytest.raises(IllegalTransition):
        move_step(attempt.pk, source=source, target=target)

    assert queries.captured_queries == []
    assert status_of(attempt) == source


def test_the_claim_takes_an_attempt_only_while_its_run_is_active(attempt):
    active = (RunStatus.QUEUED, RunStatus.RUNNING)
    Run.objects.filter(pk=attempt.run_id).update(status=RunStatus.CANCELLED)

    assert not move_step(
        attempt.pk, source=StepStatus.QUEUED, target=StepStatus.RUNNING, run_status_in=active
    )
    assert status_of(attempt) == StepStatus.QUEUED

    Run.objects.filter(pk=attempt.run_id).update(status=RunStatus.RUNNING)
    assert move_step(
        attempt.pk, source=StepStatus.QUEUED, target=StepStatus.RUNNING, run_status_in=active
    )
    assert status_of(attempt) == StepStatus.RUNNING


# Rebuilding the rows from the journal writes statuses without moving anything.
WRITERS_ALLOWED = {"workflows/runs/transitions.py", "workflows/runs/projections.py"}


def step_status_writes(path: Path) -> list[int]:
    """Lines where `path` may UPDATE a step attempt's status itself (on a queryset of
    StepRun or of a run's `steps`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            # `status=…`, or a `**columns` spread that may hold it
            and any(k.arg in ("status", None) for k in node.keywords)
        ):
            receiver = ast.unparse(node.func.value)
            if "StepRun" in receiver or "steps" in receiver:
                found.append(node.lineno)
    return found


def test_no_module_but_move_step_writes_a_step_attempts_status():
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "workflows").rglob("*.py"))
        if "migrations" not in path.parts
        and str(path.relative_to(ROOT)) not in WRITERS_ALLOWED
        and (lines := step_status_writes(path))
    }

    assert offenders == {}
