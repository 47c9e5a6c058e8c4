"""A step whose output holds a number JSON cannot store (NaN, Infinity) fails at once, with
a clear error, instead of failing the database write and lying as `running` until the
heartbeat sweep fails it a minute later as `timeout.heartbeat`.

Real parts: PostgreSQL, the execution service, and a loopback HTTP server answering with
the `NaN` token that Python's JSON parser accepts and PostgreSQL's jsonb refuses.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.durable_runs import start_run_here
from tests.factories import http_step, log_step
from workflows.runs import execution
from workflows.runs.models import StepRun

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_messages(monkeypatch):
    """Celery messages this process would send are dropped: the test drives each step."""
    from workflows import tasks

    for task in (tasks.execute_step_task, tasks.run_finished_task):
        monkeypatch.setattr(task, "apply_async", lambda *args, **kwargs: None)


BODIES = {
    "ratio": b'{"ratio": NaN, "rows": [1, Infinity]}',
    "nul": b'{"text": "a\\u0000b"}',
    "surrogate": b'{"names": ["\\ud800"]}',
    "nul-key": b'{"a\\u0000": 1}',
}


@pytest.fixture
def nan_server():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = BODIES[self.path.rsplit("/", 1)[-1]]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ratio"
    server.shutdown()
    server.server_close()


def attempt_of(run, step_id: str) -> StepRun:
    return StepRun.objects.get(run=run, step_id=step_id, attempt=1)


def test_a_transform_rendering_infinity_fails_at_once_as_an_expression_error(no_messages):
    run = start_run_here(
        "infinite-transform",
        {"id": "ratio", "kind": "transform", "config": {"output": {"r": "{{ 1.0 / 0.0 }}"}}},
    )

    execution.execute_step(step_run_id=attempt_of(run, "ratio").pk)

    step = attempt_of(run, "ratio")
    assert (step.status, step.error_code) == ("failed", "expression")
    assert "not a finite number" in step.error


def test_an_http_answer_holding_nan_fails_the_step_at_once_with_its_path(no_messages, nan_server):
    run = start_run_here("nan-answer", http_step("call", nan_server))

    execution.execute_step(step_run_id=attempt_of(run, "call").pk)

    step = attempt_of(run, "call")
    assert (step.status, step.error_code) == ("failed", "output")
    assert "not a finite number" in step.error and "output/body/" in step.error
    assert step.output is None


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("nul", "output/body/text holds a NUL character"),
        ("surrogate", "output/body/names/0 holds an unpaired surrogate"),
        ("nul-key", "output/body has a key that holds a NUL character"),
    ],
)
def test_an_http_answer_holding_text_jsonb_refuses_fails_the_step_at_once(
    no_messages, nan_server, answer, problem
):
    url = nan_server.rsplit("/", 1)[0] + "/" + answer
    run = start_run_here(f"text-{answer}", http_step("call", url))

    execution.execute_step(step_run_id=attempt_of(run, "call").pk)

    step = attempt_of(run, "call")
    assert (step.status, step.error_code) == ("failed", "output")
    assert problem in step.error


def test_a_for_each_item_output_holding_nan_fails_its_item_not_the_worker(no_messages, nan_server):
    run = start_run_here(
        "nan-items",
        {
            "id": "loop",
            "kind": "for_each",
            "config": {
                "items": "[1, 2]",
                "do": {"kind": "http_request", "config": {"url": nan_server, "method": "POST"}},
            },
        },
        log_step("after", after=("loop",)),
    )

    execution.execute_step(step_run_id=attempt_of(run, "loop").pk)

    step = attempt_of(run, "loop")
    assert step.status == "failed"
    assert "2 of 2 items failed" in step.error and "not a finite number" in step.error
