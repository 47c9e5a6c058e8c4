"""Step kinds route to named Celery queues (workflows/runs/step_queues.py): a worker started for
one queue runs only the kinds routed there, and the others wait in their own queue."""

from __future__ import annotations

import pytest

from tests.factories import cloudevent, definition, http_step, log_step
from tests.ops_processes import PYTHON, forget, private_stack, worker_command
from tests.waiting import wait_until
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events.envelope import from_structured
from workflows.infra.redis_client import client
from workflows.runs import step_queues
from workflows.runs.matching import ingest_event
from workflows.runs.models import StepRun


def test_light_kinds_go_to_the_fast_queue_and_the_rest_to_the_io_queue(settings):
    settings.SIGNALBOX_STEP_QUEUES = {}
    assert step_queues.queue_for("transform") == step_queues.queue_for("log") == "steps.fast"
    assert step_queues.queue_for("http_request") == step_queues.queue_for("python") == "steps.io"
    assert step_queues.queue_for("send_email") == "steps.io"


def test_a_kind_named_in_the_setting_goes_to_its_own_queue(settings):
    settings.SIGNALBOX_STEP_QUEUES = {"http_request": "steps.http"}
    assert step_queues.queue_for("http_request") == "steps.http"
    assert step_queues.queue_for("python") == "steps.io"
    assert "steps.http" in step_queues.step_queues()
    assert step_queues.all_queues()[0] == settings.CELERY_TASK_DEFAULT_QUEUE
    assert "http_request" in step_queues.routes()["steps.http"]


def test_every_queue_is_declared_so_a_worker_without_q_consumes_them_all():
    from orchestrator.celery import app

    declared = set(app.amqp.queues)
    assert {"signalbox", "steps.fast", "steps.io"} <= declared


@pytest.mark.django_db(transaction=True)
def test_a_worker_of_one_queue_runs_only_the_kinds_routed_there(settings, recorder):
    # The bus consumer sends every step to the workers (no inline light steps), so each
    # step's message goes through its queue.
    stack = private_stack("queues", SIGNALBOX_BUS_INLINE_STEPS="0")
    prefix = stack.env["SIGNALBOX_REDIS_PREFIX"]
    settings.REDIS_PREFIX = prefix  # this process publishes on the processes' bus
    put_workflow(
        slug="routed",
        raw=definition(log_step("note"), http_step("call", f"{recorder.url}/hook")),
    )
    publish_workflow(slug="routed")
    stack.start("bus", [PYTHON, "manage.py", "consume_bus"])
    stack.start("fast", worker_command(stack, "fast", "steps.fast"))
    try:
        ingest_event(envelope=from_structured(cloudevent()), publish=True)

        def attempt(step_id):
            return StepRun.objects.filter(run__workflow__slug="routed", step_id=step_id).first()

        wait_until(
            lambda: (a := attempt("note")) and a.status == "succeeded",
            timeout=60,
            message="the log step to run on the fast worker",
        )
        io_queue = f"{prefix}:celery:steps.io"
        wait_until(lambda: client().llen(io_queue) == 1, timeout=30, message="the io message")
        assert attempt("call").status == "queued"
        assert recorder.requests == []

        stack.start("io", worker_command(stack, "io", "steps.io"))
        wait_until(
            lambda: attempt("call").status == "succeeded",
            timeout=60,
            message="the HTTP step to run once an io worker serves its queue",
        )
        assert client().llen(io_queue) == 0
    finally:
        stack.stop()
        forget(prefix)


def test_the_launchers_worker_consumes_every_queue_unless_told_otherwise():
    from orchestrator.launcher import worker_queue_args

    assert worker_queue_args({}) == []
    assert worker_queue_args({"SIGNALBOX_WORKER_QUEUES": " steps.io, signalbox "}) == [
        "--queues",
        "steps.io,signalbox",
    ]
