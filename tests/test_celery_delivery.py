"""Celery and Redis' visibility timeout: nothing is sent with an ETA or a countdown, the
visibility timeout outlasts the longest lease, and every task is acknowledged late.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from tests.durable_runs import (
    attempt,
    start_run_here,
)
from workflows.core import engine
from workflows.core.definition import FORMAT_SCHEMA
from workflows.runs import advance as runs
from workflows.runs import execution, sweeps

pytestmark = pytest.mark.django_db(transaction=True)


def test_steps_retries_and_finished_runs_are_sent_without_eta_or_countdown(sent):
    run = start_run_here(
        "no-eta",
        {
            "id": "flaky",
            "kind": "log",
            "config": {"message": "hi"},
            "retry": {"max_attempts": 2, "backoff": "fixed", "delay_seconds": 600, "jitter": False},
        },
    )
    first = attempt(run.pk, "flaky")
    assert execution.claim(first.pk, "here")
    runs.record_result(
        step_run_id=first.pk,
        happening=engine.StepFinished(
            "flaky", 1, succeeded=False, retryable=True, error="try again", code="network"
        ),
    )
    second = attempt(run.pk, "flaky", 2)
    sent_before_due = list(sent)

    assert sweeps.enqueue_due_steps(now=second.not_before - timedelta(seconds=1)) == 0
    assert sweeps.enqueue_due_steps(now=second.not_before + timedelta(seconds=1)) == 1
    assert execution.execute_step(step_run_id=second.pk) is True

    assert sent_before_due == [("signalbox.execute_step", (first.pk,), {})]  # retry: a DB row
    assert sent == [
        ("signalbox.execute_step", (first.pk,), {}),
        ("signalbox.execute_step", (second.pk,), {}),
    ]


def test_redis_visibility_timeout_outlasts_the_longest_step_lease():
    from orchestrator.celery import app

    step_schema = FORMAT_SCHEMA["properties"]["steps"]["items"]["properties"]
    longest_lease = step_schema["timeout_seconds"]["maximum"] + runs.LEASE_GRACE.total_seconds()

    assert app.conf.broker_transport_options["visibility_timeout"] > longest_lease
    assert runs.DEFAULT_STEP_TIMEOUT.total_seconds() < longest_lease
    assert runs.REENQUEUE_AFTER.total_seconds() < longest_lease


def test_every_task_is_acknowledged_late_and_rejected_when_its_worker_is_lost():
    from orchestrator.celery import app

    app.loader.import_default_modules()
    ours = {name: task for name, task in app.tasks.items() if name.startswith("signalbox.")}

    assert {"signalbox.execute_step", "signalbox.run_finished"} <= set(ours)
    for name, task in ours.items():
        assert (task.acks_late, task.reject_on_worker_lost) == (True, True), name


def test_no_code_sends_a_task_with_an_eta_or_a_countdown():
    root = Path(__file__).resolve().parent.parent
    timed = re.compile(r"\b(eta|countdown)\s*=|apply_async\(")
    found = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for folder in ("workflows", "dashboard", "orchestrator")
        for path in (root / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if timed.search(line)
    ]

    assert found == []
