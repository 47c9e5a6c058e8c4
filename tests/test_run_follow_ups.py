"""A finished run sends the `run_finished` follow-up only when it has work to do: a parent
step to resume, children to cancel, or queued runs of its workflow to start. Most runs have
none, and the message cost them a send, a worker's dispatch and two reads. Celery messages
are recorded instead of sent (the `sent` fixture, tests/conftest.py)."""

from __future__ import annotations

import pytest
from django.db import transaction

from tests.durable_runs import attempt, start_run_here
from tests.factories import definition, log_step
from workflows import tasks
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.runs import advance as runs
from workflows.runs import control as run_control
from workflows.runs import execution
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

FOLLOW_UP = "signalbox.run_finished"


def follow_ups(sent) -> list[int]:
    return [args[0] for name, args, _options in sent if name == FOLLOW_UP]


def test_a_run_with_no_parent_no_limits_and_nothing_queued_sends_no_follow_up(sent):
    run = start_run_here("plain", log_step("only"))

    assert execution.execute_step(step_run_id=attempt(run.pk, "only").pk)

    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert follow_ups(sent) == []


def test_a_run_of_a_limited_workflow_sends_its_follow_up(sent):
    raw = definition(log_step("only"), event="com.example.limited")
    raw["concurrency"] = {"max_runs": 1}
    put_workflow(slug="limited", raw=raw)
    version = publish_workflow(slug="limited")
    run = Run.objects.create(workflow=version.workflow, version=version)
    with transaction.atomic():
        run_control.admit(runs.lock_run(run.pk))

    assert execution.execute_step(step_run_id=attempt(run.pk, "only").pk)

    assert follow_ups(sent) == [run.pk]


def test_a_run_of_an_unlimited_version_starts_a_run_queued_under_an_older_limited_one(sent):
    limited = definition(log_step("only"), event="com.example.versions")
    limited["concurrency"] = {"max_runs": 1}
    put_workflow(slug="versions", raw=limited)
    old = publish_workflow(slug="versions")
    first, queued = (Run.objects.create(workflow=old.workflow, version=old) for _ in range(2))
    for run in (first, queued):
        with transaction.atomic():
            run_control.admit(runs.lock_run(run.pk))
    assert Run.objects.get(pk=queued.pk).status == "queued"  # behind `first`
    # The limit is lifted; `first` is cancelled meanwhile, and a run of the new version
    # takes its place.
    put_workflow(slug="versions", raw=definition(log_step("only"), event="com.example.versions"))
    new = publish_workflow(slug="versions")
    Run.objects.filter(pk=first.pk).update(status="cancelled")
    latest = Run.objects.create(workflow=new.workflow, version=new)
    with transaction.atomic():
        assert run_control.admit(runs.lock_run(latest.pk))
    sent.clear()

    assert execution.execute_step(step_run_id=attempt(latest.pk, "only").pk)

    # Its version has no limit, but a run of the workflow waits: the follow-up goes, and
    # what it does starts the queued run.
    assert follow_ups(sent) == [latest.pk]
    tasks.run_finished_task.run(latest.pk)
    assert Run.objects.get(pk=queued.pk).status == "running"


def test_a_cancelled_run_sends_its_follow_up_for_its_children(sent):
    run = start_run_here("to-cancel", log_step("only"))
    sent.clear()

    assert run_control.cancel_run(run_id=run.pk, reason="not wanted")

    assert follow_ups(sent) == [run.pk]
