"""Each action step for real: email through a loopback SMTP server, registered Python
functions, events emitted with their causation, transforms, logs, fail, and the error codes
of http_request that retry policies match.

"By hand" runs go through the real services (ingest, match, execute_step, record_result) in
this process, without the bus or a worker: each queued attempt is executed by the test."""

from __future__ import annotations

import email
import email.policy
import logging
import uuid
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from django.db import transaction
from django.utils import timezone

from orchestrator.embedded_redis import free_port
from tests.factories import cloudevent, definition, log_step
from tests.http_recorder import Reply
from tests.waiting import wait_until
from workflows.access.secrets import set_secret
from workflows.authoring.definitions import (
    definition_for,
    parse_definition,
    publish_workflow,
    put_workflow,
)
from workflows.core.definition import InvalidDefinition, RetryPolicy
from workflows.core.expressions import render_value
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.runs.execution import build_context, claim, execute_step
from workflows.runs.matching import ingest_event, match_event
from workflows.runs.models import Run, StepRun
from workflows.runs.sweeps import expire_leases
from workflows.steps import registry
from workflows.steps.base import StepContext, StepError
from workflows.steps.http_request import MAX_BODY_BYTES, HttpRequest
from workflows.steps.python import registered_functions, step_function

CE_JSON = {"Content-Type": "application/cloudevents+json"}


def context(**overrides) -> StepContext:
    values = {
        "run_id": 5,
        "step_id": "step",
        "attempt": 1,
        "idempotency_key": "sb-kinds-0001",
        "event": {"data": {"order": 42}},
        "steps": {},
        "outbound_allow": ("127.0.0.1/32",),
    }
    values.update(overrides)
    return StepContext(**values)


# --- runs by hand ------------------------------------------------------------------------------
class ByHand:
    def __init__(self, queued: list[int]):
        self.queued = queued

    def start(self, slug: str, body: dict, event: dict) -> Run:
        put_workflow(slug=slug, raw=body)
        publish_workflow(slug=slug)
        stored, _created = ingest_event(envelope=from_structured(event))
        (run,) = match_event(event_id=stored.pk)
        return run

    def drain(self) -> None:
        while self.queued:
            execute_step(step_run_id=self.queued.pop(0), worker="test")

    def run(self, slug: str, body: dict, event: dict | None = None) -> Run:
        run = self.start(slug, body, event or cloudevent())
        self.drain()
        run.refresh_from_db()
        return run


@pytest.fixture
def by_hand(transactional_db, monkeypatch):
    queued: list[int] = []
    # No Celery message and no bus entry: this test executes every attempt itself, and a
    # running stack (other tests' processes) must not take them.
    monkeypatch.setattr(
        "workflows.runs.advance.enqueue_on_commit",
        lambda step_run_id, kind=None: queued.append(step_run_id),
    )

    def on_the_bus(event):
        # Marked matched as well, so a stack's outbox relay never takes it either.
        now = timezone.now()
        Event.objects.filter(pk=event.pk).update(published_at=now, matched_at=now)
        return True

    monkeypatch.setattr("workflows.events.bus.publish", on_the_bus)
    monkeypatch.setenv("SIGNALBOX_PYTHON_MODULES", "tests.python_steps")
    return ByHand(queued)


def step_of(run: Run, step_id: str, attempt: int | None = None) -> StepRun:
    attempts = run.steps.filter(step_id=step_id).order_by("-attempt")
    return attempts.get(attempt=attempt) if attempt else attempts.first()


# --- send_email ----------------------------------------------------------------------------------
class Mailbox:
    """What a loopback SMTP server received; `refuse` makes it answer RCPT or DATA with a
    given SMTP reply."""

    def __init__(self) -> None:
        self.envelopes = []
        self.refuse_rcpt = ""
        self.refuse_data = ""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.refuse_data:
            return self.refuse_data
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self):
        return [
            email.message_from_bytes(e.content, policy=email.policy.default) for e in self.envelopes
        ]


@pytest.fixture
def smtp(settings):
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.DEFAULT_FROM_EMAIL = "signalbox@example.com"
    yield mailbox
    controller.stop()


def send(config: dict, **ctx):
    return registry.get("send_email").execute(config, context(**ctx))


def test_an_email_reaches_the_smtp_server_with_its_idempotency_headers(smtp):
    output = send(
        {
            "to": ["ann@example.com"],
            "cc": ["ops@example.com"],
            "bcc": ["audit@example.com"],
            "subject": "Order 42 shipped",
            "body": "It is on its way.",
            "html": "<p>It is on its way.</p>",
        }
    )

    (envelope,) = smtp.envelopes
    (message,) = smtp.messages()
    assert envelope.mail_from == "signalbox@example.com"
    assert sorted(envelope.rcpt_tos) == ["ann@example.com", "audit@example.com", "ops@example.com"]
    assert message["Idempotency-Key"] == "sb-kinds-0001"
    assert message["Message-ID"] == "<sb-kinds-0001@signalbox>"
    assert message["Subject"] == "Order 42 shipped"
    assert message["To"] == "ann@example.com" and message["Cc"] == "ops@example.com"
    assert message["Bcc"] is None
    assert message.get_body(("plain",)).get_content().strip() == "It is on its way."
    assert message.get_body(("html",)).get_content().strip() == "<p>It is on its way.</p>"
    assert output == {
        "sent": 1,
        "to": ["ann@example.com"],
        "message_id": "<sb-kinds-0001@signalbox>",
    }


def test_a_retried_email_carries_the_same_message_id_so_a_receiver_can_drop_it(smtp):
    config = {"to": ["ann@example.com"], "subject": "Once", "body": "Only once, please."}

    send(config, attempt=1)
    send(config, attempt=2)

    ids = [m["Message-ID"] for m in smtp.messages()]
    assert ids == ["<sb-kinds-0001@signalbox>"] * 2


@pytest.mark.parametrize(
    ("where", "reply", "code", "retryable"),
    [
        ("rcpt", "550 5.1.1 no such mailbox", "smtp.550", False),
        ("rcpt", "451 4.3.0 try again later", "smtp.451", True),
        ("data", "554 5.7.1 message refused", "smtp.554", False),
        ("data", "452 4.3.1 out of storage", "smtp.452", True),
    ],
)
def test_an_smtp_refusal_gives_its_code_and_only_4xx_are_retryable(
    smtp, where, reply, code, retryable
):
    setattr(smtp, f"refuse_{where}", reply)

    with pytest.raises(StepError) as caught:
        send({"to": ["ann@example.com"], "subject": "s", "body": "b"})

    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    assert smtp.envelopes == []


def test_no_mail_server_is_a_retryable_network_error(smtp, settings):
    settings.EMAIL_PORT = free_port()

    with pytest.raises(StepError) as caught:
        send({"to": ["ann@example.com"], "subject": "s", "body": "b", "timeout_seconds": 5})

    assert (caught.value.code, caught.value.retryable) == ("network", True)


@pytest.mark.parametrize(
    "subject", ["Hi\r\nBcc: victim@example.com", "Hi\nX-Injected: 1", "Hi\rBcc: v@example.com"]
)
def test_a_subject_carrying_a_line_break_is_refused_and_nothing_is_sent(smtp, subject):
    with pytest.raises(StepError) as caught:
        send({"to": ["ann@example.com"], "subject": subject, "body": "b"})

    assert caught.value.code == "invalid_header" and caught.value.retryable is False
    assert smtp.envelopes == []


@pytest.mark.parametrize(
    "config",
    [
        {"to": ["not an address"]},
        {"to": ["ann@example.com, eve@example.com"]},
        {"to": ["ann@example.com"], "cc": ["eve@example.com\r\nBcc: x@example.com"]},
        {"to": ["ann@example.com"], "from": "nobody"},
    ],
)
def test_an_invalid_address_is_refused_before_connecting(smtp, config):
    with pytest.raises(StepError) as caught:
        send({"subject": "s", "body": "b", **config})

    assert caught.value.code == "invalid_address"
    assert smtp.envelopes == []


def test_an_email_step_in_a_run_sends_rendered_fields_with_the_runs_key(by_hand, smtp):
    run = by_hand.run(
        "mailing",
        definition(
            {
                "id": "notify",
                "kind": "send_email",
                "config": {
                    "to": ["{{ event.data.email }}"],
                    "subject": "Order {{ event.data.order }} confirmed",
                    "body": "Hello {{ event.data.name }}",
                },
            }
        ),
        cloudevent(data={"order": 7, "email": "bo@example.com", "name": "Bo"}),
    )

    (message,) = smtp.messages()
    step = step_of(run, "notify")
    assert run.status == "succeeded"
    assert message["To"] == "bo@example.com" and message["Subject"] == "Order 7 confirmed"
    assert message["Idempotency-Key"] == step.idempotency_key
    assert step.output["message_id"] == f"<{step.idempotency_key}@signalbox>"


# --- python --------------------------------------------------------------------------------------
def run_python(config: dict, monkeypatch, modules: str = "tests.python_steps", **ctx):
    monkeypatch.setenv("SIGNALBOX_PYTHON_MODULES", modules)
    return registry.get("python").execute(config, context(**ctx))


def test_a_registered_function_runs_with_its_input_and_the_context(monkeypatch):
    output = run_python(
        {
            "function": "tests.total",
            "input": {"lines": [{"price": 3, "qty": 2}, {"price": 4, "qty": 1}]},
        },
        monkeypatch,
        run_id=77,
    )

    assert output == {"total": 10, "lines": 2, "run": 77, "key": "sb-kinds-0001"}


def test_an_unknown_function_is_an_error_listing_the_registered_ones(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.nope"}, monkeypatch)

    message = str(caught.value)
    assert "'tests.nope'" in message
    assert "tests.total" in message and "tests.broken" in message
    assert caught.value.code == "python.unknown" and caught.value.retryable is False


def test_a_function_decides_retries_by_raising_a_step_error(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.unavailable"}, monkeypatch)

    assert (caught.value.retryable, caught.value.retry_after, caught.value.code) == (
        True,
        5,
        "warehouse",
    )


def test_a_function_that_crashes_fails_the_attempt_naming_the_function(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.broken", "input": {"zero": 0}}, monkeypatch)

    assert "tests.broken" in str(caught.value) and "ZeroDivisionError" in str(caught.value)
    assert caught.value.code == "python.error"


def test_a_function_returning_something_that_is_not_json_fails_the_attempt(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.not_json"}, monkeypatch)

    assert caught.value.code == "python.output" and "tests.not_json" in str(caught.value)


def test_a_module_that_cannot_be_imported_is_a_clear_error(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python(
            {"function": "tests.total"},
            monkeypatch,
            modules="tests.python_steps, tests.no_such_module",
        )

    assert "tests.no_such_module" in str(caught.value)
    assert "SIGNALBOX_PYTHON_MODULES" in str(caught.value)
    assert caught.value.code == "python.import"


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"function": "tests.total", "code": "import os; os.system('id')"}, "/steps/0/config"),
        ({"function": "__import__('os').system('id')"}, "/steps/0/config/function"),
        ({"function": "{{ event.data.function }}"}, "/steps/0/config/function"),
        ({"function": "lambda: 1"}, "/steps/0/config/function"),
        ({"source": "def f(x, ctx): return 1"}, "/steps/0/config"),
    ],
)
def test_code_cannot_come_from_a_workflow_definition(config, path):
    with pytest.raises(InvalidDefinition) as caught:
        parse_definition(definition({"id": "py", "kind": "python", "config": config}))

    assert path in [p.path for p in caught.value.problems]


def test_a_name_cannot_be_registered_for_two_functions():
    with pytest.raises(ValueError, match="registered twice"):
        step_function("tests.total")(lambda input, ctx: None)

    assert "tests.total" in registered_functions()


def test_a_python_step_in_a_run_gets_its_rendered_input(by_hand):
    run = by_hand.run(
        "pricing",
        definition(
            {
                "id": "price",
                "kind": "python",
                "config": {
                    "function": "tests.total",
                    "input": {"lines": "{{ event.data.lines }}"},
                },
            }
        ),
        cloudevent(data={"lines": [{"price": 5, "qty": 3}]}),
    )

    assert run.status == "succeeded"
    assert step_of(run, "price").output["total"] == 15


# --- emit_event ----------------------------------------------------------------------------------
def emitter_body(**extra) -> dict:
    return definition(
        {
            "id": "announce",
            "kind": "emit_event",
            **extra,
            "config": {
                "type": "com.example.order.checked",
                "subject": "order-{{ event.data.order }}",
                "data": {"order": "{{ event.data.order }}", "ok": True},
            },
        }
    )


@pytest.mark.django_db(transaction=True)
def test_an_emitted_event_keeps_the_conversation_and_starts_the_workflows_listening(api):
    for slug, body in (
        ("checker", emitter_body()),
        ("listener", definition(log_step("heard"), event="com.example.order.checked")),
    ):
        assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
        assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201
    origin = f"origin-{uuid.uuid4().hex[:8]}"
    sent = api.post(
        "/api/v1/events",
        json=cloudevent(id=origin, correlationid="conv-9", data={"order": 9}),
        headers=CE_JSON,
    )
    assert sent.status_code == 202

    heard = wait_until(
        lambda: Run.objects.filter(workflow__slug="listener", status="succeeded").first(),
        timeout=60,
        message="the listener's run",
    )
    checker = Run.objects.get(workflow__slug="checker")
    emitted = heard.event
    step = step_of(checker, "announce")
    assert emitted.type == "com.example.order.checked" and emitted.subject == "order-9"
    assert emitted.data == {"order": 9, "ok": True}
    assert emitted.correlation_id == "conv-9" == heard.correlation_id == checker.correlation_id
    assert emitted.causation_id == origin
    assert emitted.ce_id == step.idempotency_key
    assert emitted.source == f"/signalbox/runs/{checker.pk}"
    assert step.output == {
        "id": emitted.pk,
        "ce_id": emitted.ce_id,
        "type": "com.example.order.checked",
        "duplicate": False,
    }


def test_a_retried_emit_after_a_lost_worker_publishes_no_second_event(by_hand):
    run = by_hand.start(
        "checker",
        emitter_body(retry={"max_attempts": 2, "delay_seconds": 0}),
        cloudevent(data={"order": 3}),
    )
    # Attempt 1: a worker claims it and emits, then dies before recording the result.
    first = StepRun.objects.get(pk=by_hand.queued.pop(0))
    assert claim(first.pk, "doomed-worker")
    step = definition_for(run.version).steps["announce"]
    ctx = build_context(run, step, first, {})
    emitted = registry.get("emit_event").execute(
        render_value(dict(step.config), ctx.expression_context()), ctx
    )
    # The lease runs out: attempt 1 fails as lost, attempt 2 is scheduled and runs.
    assert expire_leases(now=timezone.now() + timedelta(hours=1)) == 1
    by_hand.drain()

    run.refresh_from_db()
    second = step_of(run, "announce", attempt=2)
    assert run.status == "succeeded"
    assert step_of(run, "announce", attempt=1).error_code == "timeout.heartbeat"  # no heartbeat
    assert Event.objects.filter(type="com.example.order.checked").count() == 1
    assert second.output == {**emitted, "duplicate": True}


def test_an_emitted_event_that_breaks_its_schema_fails_the_step_without_retrying():
    from workflows.events.schemas import SchemaViolation

    def emit(config):
        raise SchemaViolation(
            "com.example.order.checked", 2, [{"path": "/order", "message": "not a string"}]
        )

    with pytest.raises(StepError) as caught:
        registry.get("emit_event").execute(
            {"type": "com.example.order.checked"}, context(emit=emit)
        )

    assert caught.value.code == "schema" and caught.value.retryable is False
    assert "/order: not a string" in str(caught.value)


# --- transform, log, fail ------------------------------------------------------------------------
def test_a_transform_builds_json_from_expressions(by_hand):
    run = by_hand.run(
        "shaping",
        definition(
            log_step("first"),
            {
                "id": "shape",
                "kind": "transform",
                "after": ["first"],
                "config": {
                    "output": {
                        "order": "{{ event.data.order }}",
                        "label": "order #{{ event.data.order }} for {{ event.data.customer.name }}",
                        "skus": "{{ event.data.lines.map(l, l.sku) }}",
                        "big": "{{ event.data.lines.exists(l, l.qty > 5) }}",
                        "first": "{{ steps.first.output.message }}",
                        "fixed": [1, None, {"deep": "{{ run.workflow }}"}],
                    }
                },
            },
        ),
        cloudevent(
            data={
                "order": 8,
                "customer": {"name": "Cy"},
                "lines": [{"sku": "a", "qty": 6}, {"sku": "b", "qty": 1}],
            }
        ),
    )

    assert run.status == "succeeded"
    assert step_of(run, "shape").output == {
        "order": 8,
        "label": "order #8 for Cy",
        "skus": ["a", "b"],
        "big": True,
        "first": "hello",
        "fixed": [1, None, {"deep": "shaping"}],
    }


def test_a_template_arriving_in_event_data_is_output_as_text_and_reveals_no_secret(by_hand):
    set_secret(name="token", value="tok_3f9a8c7e6d5b")
    run = by_hand.run(
        "echo",
        definition(
            {
                "id": "shape",
                "kind": "transform",
                "config": {"output": {"note": "{{ event.data.note }}"}},
            },
        ),
        cloudevent(data={"note": "{{ secrets.token }}"}),
    )

    step = step_of(run, "shape")
    assert step.output == {"note": "{{ secrets.token }}"}
    assert "tok_3f9a8c7e6d5b" not in str(step.output) + str(step.input)


def test_an_expression_error_fails_the_step_naming_the_expression_and_the_step(by_hand):
    set_secret(name="token", value="tok_3f9a8c7e6d5b")
    run = by_hand.run(
        "broken",
        definition(
            {
                "id": "shape",
                "kind": "http_request",
                # Rendering fails before any call: port 9 on loopback is never dialled.
                "config": {
                    "url": "http://127.0.0.1:9/",
                    "headers": {"X": "{{ secrets.token.nope }}"},
                },
            },
        ),
    )

    step = step_of(run, "shape")
    assert run.status == "failed" and step.error_code == "expression"
    assert "secrets.token.nope" in step.error and "step shape /headers" in step.error
    assert "tok_3f9a8c7e6d5b" not in step.error + run.error


def test_a_log_step_writes_its_message_with_secrets_masked(caplog):
    with caplog.at_level(logging.INFO, logger="signalbox.steps"):
        output = registry.get("log").execute(
            {"message": "calling with tok_3f9a8c7e6d5b", "level": "warning"},
            context(secrets={"token": "tok_3f9a8c7e6d5b"}),
        )

    (record,) = [r for r in caplog.records if r.name == "signalbox.steps"]
    assert record.levelno == logging.WARNING
    assert "run 5 step step: calling with ••••••" in record.getMessage()
    assert "tok_3f9a8c7e6d5b" not in caplog.text
    assert output == {"message": "calling with tok_3f9a8c7e6d5b"}


def test_a_log_message_rendered_to_a_number_is_logged_as_text(caplog):
    with caplog.at_level(logging.INFO, logger="signalbox.steps"):
        output = registry.get("log").execute({"message": 42}, context())

    assert output == {"message": 42} and "step step: 42" in caplog.text


def test_a_fail_step_fails_the_run_with_its_code_and_leaves_a_dead_letter(by_hand):
    run = by_hand.run(
        "refusing",
        definition(
            {
                "id": "stop",
                "kind": "fail",
                "config": {"message": "order {{ event.data.order }} is blocked", "code": "blocked"},
            },
        ),
        cloudevent(data={"order": 5}),
    )

    step = step_of(run, "stop")
    assert run.status == "failed" and "order 5 is blocked" in run.error
    assert (step.error_code, step.retryable) == ("fail.blocked", False)
    assert DeadLetter.objects.get(run=run).payload["error_code"] == "fail.blocked"


def test_a_fail_step_with_a_failure_edge_lets_the_run_go_on(by_hand):
    body = definition(
        {"id": "stop", "kind": "fail", "config": {"message": "no"}},
        log_step("recover"),
    )
    body["edges"] = [{"from": "stop", "to": "recover", "port": "failure"}]

    run = by_hand.run("recovering", body)

    assert run.status == "succeeded"
    assert step_of(run, "stop").error_code == "fail"
    assert step_of(run, "recover").status == "succeeded"


# --- http_request: codes for retry policies ------------------------------------------------
def http_error(url: str, **config) -> StepError:
    with pytest.raises(StepError) as caught:
        HttpRequest().execute({"url": url, **config}, context())
    return caught.value


@pytest.fixture
def quiet_circuit(recorder):
    """Closed circuit for the recorder's host before and after (ports get reused)."""
    from workflows.infra import circuit

    circuit.reset(circuit.host_of(recorder.url))
    yield
    circuit.reset(circuit.host_of(recorder.url))


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (500, "http.500", True),
        (503, "http.503", True),
        (429, "http.429", True),
        (404, "http.404", False),
        (409, "http.409", False),
    ],
)
def test_an_http_error_answer_has_a_code_retry_policies_match_by_prefix(
    recorder, quiet_circuit, status, code, retryable
):
    recorder.answer(Reply(status=status))

    error = http_error(recorder.url)

    assert (error.code, error.retryable) == (code, retryable)
    assert RetryPolicy(retry_on=("http.5",)).retries(
        retryable=error.retryable, code=error.code
    ) is code.startswith("http.5")
    assert RetryPolicy(retry_on=("http.429", "network")).retries(
        retryable=error.retryable, code=error.code
    ) is (status == 429)


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("refused", "outbound_refused"),
        ("redirect-loop", "redirects"),
        ("redirect-ftp", "redirects"),
        ("http://[::1/", "invalid_url"),
        ("http:///no-host", "invalid_url"),
    ],
)
def test_a_request_that_cannot_be_made_has_a_code_and_is_not_retried(
    recorder, quiet_circuit, setup, code
):
    url = recorder.url
    if setup == "refused":
        url = "http://169.254.169.254/latest/meta-data/"
    elif setup == "redirect-loop":
        recorder.default = Reply(status=302, headers={"Location": recorder.url + "/again"})
    elif setup == "redirect-ftp":
        recorder.answer(Reply(status=302, headers={"Location": "ftp://example.com/file"}))
    else:
        url = setup

    error = http_error(url, method="GET")

    assert (error.code, error.retryable) == (code, False)


def test_a_huge_answer_is_read_only_up_to_the_limit(recorder, quiet_circuit):
    recorder.answer(Reply(status=200, body="z" * (MAX_BODY_BYTES + 500_000)))

    output = HttpRequest().execute({"url": recorder.url, "method": "GET"}, context())

    assert isinstance(output["body"], str) and len(output["body"]) == MAX_BODY_BYTES


def test_a_retry_policy_with_retry_on_retries_only_the_matching_codes(
    by_hand, recorder, quiet_circuit
):
    recorder.answer(Reply(status=503), Reply(status=404))
    body = definition(
        {
            "id": "call",
            "kind": "http_request",
            "config": {"url": recorder.url},
            "retry": {"max_attempts": 5, "delay_seconds": 0, "retry_on": ["http.5"]},
        }
    )

    run = by_hand.start("selective", body, cloudevent())
    by_hand.drain()
    # The 503 was retried (a due retry is enqueued by the scheduler's sweep: run it by hand).
    from workflows.runs.sweeps import enqueue_due_steps

    with transaction.atomic():
        enqueue_due_steps(now=timezone.now() + timedelta(seconds=5))
    by_hand.drain()
    run.refresh_from_db()

    codes = list(run.steps.order_by("attempt").values_list("error_code", flat=True))
    assert codes == ["http.503", "http.404"]
    assert run.status == "failed" and len(recorder.requests) == 2
