"""Tracing and logs: one trace across the real processes, exported over OTLP to a loopback
receiver; the incoming trace context reaches a step's HTTP call; JSON log lines with ids."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from orchestrator import servers
from orchestrator.logging_config import ID_FIELDS, TextLines, logging_settings
from tests.factories import cloudevent, definition, http_step, log_step
from tests.otlp_receiver import OtlpReceiver
from tests.stack import LOGS, ROOT, Stack, make_stack
from tests.test_outbox import manage, own_database
from tests.waiting import wait_until
from workflows.infra import tracing

CE_JSON = {"Content-Type": "application/cloudevents+json"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


def publish(api: httpx.Client, slug: str, body: dict) -> None:
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def header(request, name: str) -> str | None:
    return next((v for k, v in request.headers.items() if k.lower() == name), None)


# --- a stack with tracing on and JSON logs ---------------------------------------------------
@dataclass
class Traced:
    stack: Stack
    receiver: OtlpReceiver
    api: httpx.Client

    def query(self, statement: str, *params) -> list[tuple]:
        with psycopg.connect(self.stack.env["DATABASE_URL"], autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()

    def log_lines(self, name: str) -> list[str]:
        path = LOGS / f"{self.stack.env['SIGNALBOX_REDIS_PREFIX']}-{name}.log"
        return path.read_text().splitlines()

    def span(self, span_id: str, timeout: float = 60):
        return wait_until(
            lambda: self.receiver.by_id(span_id), timeout=timeout, message=f"span {span_id}"
        )


@pytest.fixture(scope="module")
def traced():
    """Every process on its own database and Redis prefix (no other stack's relay may take
    its events), exporting spans to a loopback OTLP receiver, logging JSON."""
    receiver = OtlpReceiver()
    run = os.environ["SIGNALBOX_TEST_DB_NAME"]
    with own_database(f"{run}_tracing") as database:
        stack = make_stack(database)
        stack.env.update(
            SIGNALBOX_REDIS_PREFIX=f"{os.environ['SIGNALBOX_REDIS_PREFIX']}-tracing",
            SIGNALBOX_TRACING="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_SERVICE_NAME="signalbox-test",
            # Spans leave each process within 0.1 s, not the default 5.
            OTEL_BSP_SCHEDULE_DELAY="100",
            SIGNALBOX_LOG_FORMAT="json",
        )
        manage(stack, "migrate", "-v0")
        token = manage(stack, "create_api_token", "tracing-test", "--role", "admin")
        python = sys.executable
        stack.start("web", servers.web_command(python, host="127.0.0.1", port=stack.port))
        stack.start(
            "worker",
            [
                str(Path(python).parent / "celery"),
                "-A",
                "orchestrator",
                "--quiet",  # no banner: it is printed, not logged
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--hostname",
                f"tracing-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
        )
        stack.start("bus", [python, "manage.py", "consume_bus"])
        stack.start("scheduler", [python, "manage.py", "scheduler", "--interval", "0.2"])
        try:
            stack.wait_ready()
            with httpx.Client(
                base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=15
            ) as api:
                yield Traced(stack, receiver, api)
        finally:
            stack.stop()
            receiver.close()


def emit_step(step_id: str, event_type: str, *, after: tuple[str, ...]) -> dict:
    return {
        "id": step_id,
        "kind": "emit_event",
        "config": {"type": event_type},
        "after": list(after),
    }


def test_the_spans_of_every_process_form_one_tree_under_the_incoming_traceparent(traced, recorder):
    publish(
        traced.api,
        "traced-tree",
        definition(
            http_step("call", f"{recorder.url}/hook"),
            emit_step("tell", "traced.told", after=("call",)),
            event="traced.order",
        ),
    )
    answer = traced.api.post(
        "/api/v1/events",
        json=cloudevent("traced.order", id="tree-1"),
        headers={**CE_JSON, "traceparent": INCOMING},
    )
    assert answer.status_code == 202, answer.text

    call = wait_until(lambda: recorder.requests, timeout=60, message="the step's call")[0]
    sent = header(call, "traceparent")
    assert sent is not None and sent.split("-")[1] == TRACE_ID

    # Walk up from the span of the call the loopback server received.
    outgoing = traced.span(sent.split("-")[2])
    step = traced.span(outgoing.parent_span_id)
    run = traced.span(step.parent_span_id)
    delivery = traced.span(run.parent_span_id)
    ingest = traced.span(delivery.parent_span_id)
    assert [s.name for s in (ingest, delivery, run, step, outgoing)] == [
        "signalbox.ingest",
        "signalbox.deliver",
        "signalbox.run",
        "signalbox.step",
        "POST",
    ]
    assert ingest.parent_span_id == CALLER_SPAN  # continues the caller's span
    assert {s.trace_id for s in (ingest, delivery, run, step, outgoing)} == {TRACE_ID}
    assert step.attributes["signalbox.step.id"] == "call"
    assert outgoing.attributes["http.response.status_code"] == 200
    # Three processes: the web server ingests, the bus consumer matches, a worker calls.
    assert len({ingest.pid, delivery.pid, step.pid}) == 3
    assert run.pid == delivery.pid and outgoing.pid == step.pid

    # The emitted event carries the emit span's context, under the `tell` attempt.
    emit = wait_until(
        lambda: [s for s in traced.receiver.named("signalbox.emit") if s.trace_id == TRACE_ID],
        timeout=60,
        message="the emit span",
    )[0]
    tell = traced.span(emit.parent_span_id)
    assert tell.attributes["signalbox.step.id"] == "tell" and tell.parent_span_id == run.span_id
    (emitted,) = wait_until(
        lambda: traced.query(
            "SELECT extensions->>'traceparent' FROM workflows_event WHERE type = 'traced.told'"
        ),
        message="the emitted event",
    )
    assert emitted[0] == f"00-{TRACE_ID}-{emit.span_id}-01"
    # And the event the caller sent keeps the caller's context, as sent.
    (stored,) = traced.query(
        "SELECT extensions->>'traceparent' FROM workflows_event WHERE ce_id = 'tree-1'"
    )
    assert stored[0] == INCOMING


def test_a_step_calls_out_with_the_trace_id_of_the_cloudevents_extension(traced, recorder):
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    publish(
        traced.api,
        "traced-extension",
        definition(http_step("call", f"{recorder.url}/ext"), event="traced.extension"),
    )
    event = cloudevent("traced.extension", traceparent=f"00-{trace_id}-b7ad6b7169203331-01")
    assert traced.api.post("/api/v1/events", json=event, headers=CE_JSON).status_code == 202

    call = wait_until(lambda: recorder.requests, timeout=60, message="the step's call")[0]
    assert header(call, "traceparent").split("-")[1] == trace_id


def test_a_replay_starts_a_new_trace_linked_to_the_original_run(traced, recorder):
    publish(
        traced.api,
        "traced-replay",
        definition(http_step("call", f"{recorder.url}/replayed"), event="traced.replay"),
    )
    event = cloudevent("traced.replay")
    answer = traced.api.post(
        "/api/v1/events", json=event, headers={**CE_JSON, "traceparent": INCOMING}
    )
    assert answer.status_code == 202
    ((original_id, original_traceparent),) = wait_until(
        lambda: traced.query(
            "SELECT r.id, r.traceparent FROM workflows_run r JOIN workflows_workflow w "
            "ON w.id = r.workflow_id WHERE w.slug = 'traced-replay' AND r.status = 'succeeded'"
        ),
        timeout=60,
        message="the original run to succeed",
    )
    assert original_traceparent.split("-")[1] == TRACE_ID

    replayed = traced.api.post(f"/api/v1/runs/{original_id}/replay", json={"from_step": "call"})
    assert replayed.status_code == 201, replayed.text
    second = wait_until(
        lambda: recorder.requests[1] if len(recorder.requests) > 1 else None,
        timeout=60,
        message="the replay's call",
    )
    sent = header(second, "traceparent")
    assert sent.split("-")[1] != TRACE_ID

    step = traced.span(traced.span(sent.split("-")[2]).parent_span_id)
    run = traced.span(step.parent_span_id)
    assert run.name == "signalbox.run"
    assert run.attributes["signalbox.run.id"] == replayed.json()["id"]
    assert run.attributes["signalbox.run.origin"] == "replay"
    assert run.parent_span_id == ""  # a new trace, started by the operator's request
    assert run.links == [(TRACE_ID, original_traceparent.split("-")[2])]


def test_json_logs_are_one_object_per_line_with_the_ids_of_the_work(traced):
    publish(
        traced.api,
        "traced-logs",
        definition(log_step("note", message="json-logs-marker"), event="traced.logs"),
    )
    event = cloudevent("traced.logs", id="logs-1", correlationid="checkout-9")
    answer = traced.api.post(
        "/api/v1/events", json=event, headers={**CE_JSON, "traceparent": INCOMING}
    )
    assert answer.status_code == 202
    event_id = answer.json()["id"]
    ((run_id,),) = wait_until(
        lambda: traced.query(
            "SELECT id FROM workflows_run WHERE event_id = %s AND status = 'succeeded'", event_id
        ),
        timeout=60,
        message="the run to succeed",
    )

    def the_record():
        for name in ("bus", "worker"):
            for line in traced.log_lines(name):
                if "json-logs-marker" in line:
                    return json.loads(line)
        return None

    record = wait_until(the_record, message="the log step's record")
    assert record["run_id"] == run_id and record["step_id"] == "note"
    assert record["attempt"] == 1 and record["event_id"] == event_id
    assert record["correlation_id"] == "checkout-9"
    assert record["trace_id"] == TRACE_ID and len(record["span_id"]) == 16
    assert {"time", "level", "logger", "message"} <= set(record)

    assert traced.log_lines("bus") and traced.log_lines("worker")
    for name in ("bus", "worker", "scheduler"):
        for line in traced.log_lines(name):
            parsed = json.loads(line)  # every line, not only ours
            assert isinstance(parsed, dict) and set(ID_FIELDS) <= set(parsed), line


# --- tracing off (the shared stack) -------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_with_tracing_off_a_step_passes_the_incoming_traceparent_on_unchanged(api, recorder):
    publish(api, "untraced", definition(http_step("call", recorder.url), event="untraced.order"))
    answer = api.post(
        "/api/v1/events",
        json=cloudevent("untraced.order"),
        headers={**CE_JSON, "traceparent": INCOMING},
    )
    assert answer.status_code == 202
    stored = api.get(f"/api/v1/events/{answer.json()['id']}").json()
    assert stored["cloudevent"]["traceparent"] == INCOMING  # the header, kept on the event

    call = wait_until(lambda: recorder.requests, timeout=60, message="the step's call")[0]
    assert header(call, "traceparent") == INCOMING


def test_tracing_off_sets_up_no_tracer_and_loads_no_exporter():
    probe = """
import sys, django
django.setup()
from workflows.infra import tracing
from workflows.steps import http_request
from orchestrator.logging_config import ContextIds
with tracing.step_attempt(type("R", (), {"pk": 1, "event_id": 2, "correlation_id": "c",
        "traceparent": "", "version_id": 1})(), type("S", (), {"id": "a", "kind": "log"})(),
        type("A", (), {"attempt": 1})(), trigger={"traceparent": "INCOMING"}):
    headers = tracing.outgoing_http("GET", "http://127.0.0.1/", trigger={"traceparent": "INCOMING"})
    print(tracing.enabled(), headers.headers["traceparent"] == "INCOMING",
          tracing._tracer is None,
          "opentelemetry.exporter.otlp.proto.http.trace_exporter" in sys.modules)
""".replace("INCOMING", INCOMING)
    env = dict(os.environ, SIGNALBOX_TRACING="off", DJANGO_SETTINGS_MODULE="orchestrator.settings")
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True", "False"]


def test_text_lines_show_the_known_ids_and_an_unknown_format_is_refused():
    record = logging.LogRecord("signalbox.steps", logging.INFO, __file__, 1, "hello", (), None)
    token = tracing.LOG_IDS.set({"run_id": 7, "step_id": "pack", "attempt": 2})
    try:
        from orchestrator.logging_config import ContextIds

        ContextIds().filter(record)
    finally:
        tracing.LOG_IDS.reset(token)
    assert TextLines().format(record).endswith("hello [run=7 step=pack attempt=2]")
    with pytest.raises(ValueError, match="json or text"):
        logging_settings(log_format="xml", level="INFO")
