# ruff: noqa: E501 - the step configs read best one to a line
"""Secrets by design: a secret may only be rendered into a field its step kind declares
secret-capable (headers, credentials, SMTP password, python arguments marked secret);
anywhere else the definition is refused at save and publish, and a version stored before the
rule fails the step before anything is rendered. The stored input keeps secret-capable
fields unrendered; masking (plaintext and its encodings) is only the last guard."""

from __future__ import annotations

import base64
import json

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from django.test import Client
from django.utils import timezone

from orchestrator.embedded_redis import free_port
from tests.factories import cloudevent, definition
from tests.steps_by_hand import ByHand, step_of
from workflows.access.secrets import MASK, mask, set_secret
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import parse_definition, publish_workflow, put_workflow
from workflows.authoring.drafts import check_draft
from workflows.catalog import definition_parsing as definition_services
from workflows.catalog.models import WorkflowVersion
from workflows.core.definition import InvalidDefinition
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.runs.matching import ingest_event, match_event

HTTP = "http://127.0.0.1:9/"  # never dialled by the validation tests

MISPLACED = [
    ({"kind": "emit_event", "config": {"type": "t", "data": {"k": "{{ secrets.api }}"}}}, "/data/k"),
    ({"kind": "log", "config": {"message": "key {{ secrets.api }}"}}, "/message"),
    ({"kind": "transform", "config": {"output": "{{ base64.encode(secrets.api) }}"}}, "/output"),
    ({"kind": "http_request", "config": {"url": HTTP + "{{ secrets.api }}"}}, "/url"),
    ({"kind": "http_request", "config": {"url": HTTP, "json": ["{{ secrets.api }}"]}}, "/json/0"),
    ({"kind": "http_request", "config": {"url": HTTP, "query": {"k": "{{ secrets.api }}"}}}, "/query/k"),
    ({"kind": "condition", "config": {"expression": "size(secrets.api) > 3"}}, "/expression"),
    ({"kind": "python", "config": {"function": "f", "input": "{{ secrets.api }}"}}, "/input"),
    (
        {"kind": "send_email", "config": {"to": ["a@example.com"], "subject": "s", "body": "{{ secrets['api'] }}"}},
        "/body",
    ),
    (
        {"kind": "for_each", "config": {"items": "[secrets.api]", "do": {"kind": "log", "config": {}}}},
        "/items",
    ),
    (
        {"kind": "for_each", "config": {"items": "[1]", "do": {"kind": "transform", "config": {"output": "{{ secrets.api }}"}}}},
        "/do/config/output",
    ),
]  # fmt: skip

CAPABLE = [
    {"kind": "http_request", "config": {"url": HTTP, "headers": {"X-Key": "{{ secrets.api }}"}}},
    {"kind": "http_request", "config": {"url": HTTP, "auth": {"token": "{{ secrets.api }}"}}},
    {"kind": "http_request", "config": {"url": HTTP, "auth": {"username": "u", "password": "{{ secrets.api }}"}}},
    {"kind": "send_email", "config": {"to": ["a@example.com"], "subject": "s", "body": "b", "smtp_password": "{{ secrets.api }}"}},
    {"kind": "python", "config": {"function": "f", "secret_input": {"key": "{{ secrets.api }}"}}},
    {"kind": "for_each", "config": {"items": "[1]", "do": {"kind": "http_request", "config": {"url": HTTP, "headers": {"A": "{{ secrets.api }}"}}}}},
]  # fmt: skip


@pytest.fixture
def by_hand(transactional_db, monkeypatch):
    """Runs executed by the test itself, as in tests/steps_by_hand.py (no bus, no worker)."""
    queued: list[int] = []
    monkeypatch.setattr(
        "workflows.runs.advance.enqueue_on_commit",
        lambda step_run_id, kind=None: queued.append(step_run_id),
    )

    def on_the_bus(event):
        now = timezone.now()
        Event.objects.filter(pk=event.pk).update(published_at=now, matched_at=now)
        return True

    monkeypatch.setattr("workflows.events.bus.publish", on_the_bus)
    monkeypatch.setenv("SIGNALBOX_PYTHON_MODULES", "tests.python_steps")
    return ByHand(queued)


def one_step(step: dict, **extra) -> dict:
    return definition({"id": "s", **step}, **extra)


@pytest.mark.parametrize(("step", "path"), MISPLACED)
def test_a_secret_outside_a_secret_capable_field_is_refused_naming_the_field(step, path):
    with pytest.raises(InvalidDefinition) as refused:
        parse_definition(one_step(step))

    (problem,) = refused.value.problems
    assert problem.path == f"/steps/0/config{path}"
    assert "secrets cannot be used here" in problem.message
    assert "secret-capable field" in problem.message


@pytest.mark.parametrize(
    ("step", "path", "words"),
    [
        (
            {
                "kind": "http_request",
                "config": {"url": HTTP, "headers": {"A": "{{ secrets[event.data.k] }}"}},
            },
            "/headers/A",
            "name the secret",
        ),
        (
            {
                "kind": "http_request",
                "config": {
                    "url": "https://{{ event.data.host }}/x",
                    "headers": {"A": "{{ secrets.api }}"},
                },
            },
            "/url",
            "fixed scheme, host and port",
        ),
        (
            {
                "kind": "http_request",
                "config": {
                    "url": "https://api.example.com{{ event.data.at }}",
                    "auth": {"token": "{{ secrets.api }}"},
                },
            },
            "/url",
            "fixed scheme, host and port",
        ),
        (
            {
                "kind": "for_each",
                "config": {
                    "items": "[1]",
                    "do": {
                        "kind": "http_request",
                        "config": {"url": "{{ item }}", "headers": {"A": "{{ secrets.api }}"}},
                    },
                },
            },
            "/do/config/url",
            "fixed scheme, host and port",
        ),
    ],
)
def test_data_can_choose_neither_the_secret_nor_the_host_it_goes_to(step, path, words):
    with pytest.raises(InvalidDefinition) as refused:
        parse_definition(one_step(step))

    (problem,) = refused.value.problems
    assert problem.path == f"/steps/0/config{path}" and words in problem.message


def test_a_templated_path_after_a_fixed_host_may_go_with_a_secret():
    parse_definition(
        one_step(
            {
                "kind": "http_request",
                "config": {
                    "url": "https://api.example.com:8443/orders/{{ event.data.order }}?q={{ run.id }}",
                    "headers": {"A": "{{ secrets['api'] }}"},
                },
            }
        )
    )


@pytest.mark.parametrize("step", CAPABLE)
def test_a_secret_in_a_secret_capable_field_is_accepted(step):
    parse_definition(one_step(step))


def test_a_trigger_filter_cannot_read_a_secret():
    raw = definition({"id": "s", "kind": "log", "config": {"message": "hi"}})
    raw["triggers"][0]["filter"] = "event.data.key == secrets.api"

    with pytest.raises(InvalidDefinition) as refused:
        parse_definition(raw)

    assert [p.path for p in refused.value.problems] == ["/triggers/0/filter"]


def test_the_editor_shows_the_misplaced_secret_as_a_problem_of_its_node():
    raw = one_step(MISPLACED[0][0])
    problems = check_draft(raw)
    assert [p.path for p in problems] == ["/steps/0/config/data/k"]


@pytest.mark.django_db
def test_saving_through_the_api_answers_a_problem_naming_the_field():
    _token, plaintext = create_api_token(name="t", role="admin")
    response = Client().put(
        "/api/v1/workflows/leaky",
        data=json.dumps(one_step(MISPLACED[0][0])),
        content_type="application/json",
        headers={"Authorization": f"Bearer {plaintext}"},
    )

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["path"] == "/steps/0/config/data/k"
    assert "secret-capable" in error["message"]


def store_legacy_version(slug: str, raw: dict) -> None:
    """A published version saved before the rule: written past the validation."""
    put_workflow(slug=slug, raw=definition({"id": "s", "kind": "log", "config": {"message": "x"}}))
    version = publish_workflow(slug=slug)
    WorkflowVersion.objects.filter(pk=version.pk).update(definition=raw)
    definition_services._parsed.clear()


def start(slug: str) -> object:
    stored, _created = ingest_event(envelope=from_structured(cloudevent()))
    (run,) = match_event(event_id=stored.pk)
    return run


def test_an_emit_event_step_stored_before_the_rule_fails_without_emitting_the_secret(by_hand):
    set_secret(name="api", value="canary-emit-3f9a8c7e6d5b")
    store_legacy_version("legacy", one_step(MISPLACED[0][0]))

    run = start("legacy")
    by_hand.drain()
    run.refresh_from_db()

    step = step_of(run, "s")
    assert run.status == "failed" and step.error_code == "secret_misplaced"
    assert "/config/data/k" in step.error
    assert not Event.objects.filter(type="t").exists()
    assert "canary-emit" not in json.dumps([step.input, step.output, step.error])


def test_a_header_secret_reaches_the_server_but_the_stored_input_keeps_the_template(
    by_hand, recorder
):
    set_secret(name="api", value="canary-header-9c8b7a6f5e4d")
    run = by_hand.run(
        "header",
        one_step(
            {
                "kind": "http_request",
                "config": {
                    "url": recorder.url,
                    "headers": {"Authorization": "Bearer {{ secrets.api }}", "X-Order": "{{ event.data.order }}"},
                    "auth": {"username": "u", "password": "{{ secrets.api }}"},
                },
            }
        ),
    )  # fmt: skip

    (request,) = recorder.requests
    # Basic auth replaces the header: what the server sees is the auth pair.
    expected = base64.b64encode(b"u:canary-header-9c8b7a6f5e4d").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    step = step_of(run, "s")
    assert run.status == "succeeded"
    assert step.input["config"]["headers"] == {
        "Authorization": "Bearer {{ secrets.api }}",
        "X-Order": 42,  # rendered (no secret); sent as text
    }
    assert request.headers["X-Order"] == "42"
    assert step.input["config"]["auth"] == {"username": "u", "password": "{{ secrets.api }}"}


def test_a_bearer_token_goes_out_as_an_authorization_header(by_hand, recorder):
    set_secret(name="api", value="canary-bearer-1a2b3c4d5e")
    run = by_hand.run(
        "bearer",
        one_step({"kind": "http_request", "config": {"url": recorder.url, "auth": {"token": "{{ secrets.api }}"}}}),
    )  # fmt: skip

    assert run.status == "succeeded"
    assert recorder.requests[0].headers["Authorization"] == "Bearer canary-bearer-1a2b3c4d5e"


def test_an_echoing_server_gets_its_echo_of_a_secret_masked_in_every_encoding(by_hand, recorder):
    secret = "canary-echo-5d4c3b2a1f0e"
    set_secret(name="api", value=secret)
    recorder.echo = True
    run = by_hand.run(
        "echo",
        one_step(
            {
                "kind": "http_request",
                "config": {
                    "url": recorder.url,
                    "headers": {"X-Plain": "{{ secrets.api }}", "X-Quoted": "'{{ secrets.api }}'"},
                },
            }
        ),
    )

    assert run.status == "succeeded", step_of(run, "s").error
    stored = json.dumps(step_of(run, "s").output)
    assert secret not in stored
    assert json.loads(stored)["body"]["headers"]["X-Plain"] == MASK


def test_a_python_function_gets_only_its_arguments_marked_secret(by_hand):
    set_secret(name="api", value="canary-python-0f1e2d3c4b")
    set_secret(name="other", value="canary-other-0f1e2d3c4b")
    run = by_hand.run(
        "python",
        one_step({"kind": "python", "config": {"function": "tests.secret_length", "secret_input": {"key": "{{ secrets.api }}"}}}),
    )  # fmt: skip

    step = step_of(run, "s")
    assert run.status == "succeeded"
    assert step.output == {"length": len("canary-python-0f1e2d3c4b"), "named": ["api"]}
    assert step.input["config"]["secret_input"] == {"key": "{{ secrets.api }}"}


class AuthMailbox:
    def __init__(self) -> None:
        self.logins: list[tuple[bytes, bytes]] = []

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=True)

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def test_an_smtp_password_from_a_secret_logs_in_and_is_not_stored(by_hand, settings):
    mailbox = AuthMailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=mailbox.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.DEFAULT_FROM_EMAIL = "signalbox@example.com"
        set_secret(name="smtp", value="canary-smtp-77aa88bb99")
        run = by_hand.run(
            "mail",
            one_step({"kind": "send_email", "config": {"to": ["a@example.com"], "subject": "s", "body": "b", "smtp_username": "relay", "smtp_password": "{{ secrets.smtp }}"}}),
        )  # fmt: skip
    finally:
        controller.stop()

    assert run.status == "succeeded", step_of(run, "s").error
    assert mailbox.logins == [(b"relay", b"canary-smtp-77aa88bb99")]
    assert step_of(run, "s").input["config"]["smtp_password"] == "{{ secrets.smtp }}"


def test_masking_catches_the_plaintext_and_its_base64_hex_and_url_encodings():
    secret = "p@ss word/+=canary"
    raw = secret.encode()
    value = {
        "plain": f"x{secret}x",
        "b64": base64.b64encode(raw).decode(),
        "b64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "url": "p%40ss%20word%2F%2B%3Dcanary",
        "form": "p%40ss+word%2F%2B%3Dcanary",
    }

    masked = mask(value, {"k": secret})

    assert all(MASK in v for v in masked.values()), masked
    assert "canary" not in json.dumps(masked)


def test_every_declared_secret_field_is_a_field_of_its_kind():
    from workflows.steps import registry

    for name, kind in registry.all_kinds().items():
        properties = kind.config_schema.get("properties", {})
        for pattern in kind.secret_fields:
            field = pattern.strip("/").split("/")[0]
            assert field in properties, f"{name}: {pattern} names no config field"


@pytest.mark.django_db
def test_the_editor_shows_a_misplaced_secret_under_its_field_and_publish_refuses_it():
    from tests.accounts import sign_in
    from tests.editor_pages import EDIT, apply_first_step, error_box, post

    workflow, _ = put_workflow(
        slug="leaky-editor",
        raw=definition({"id": "s", "kind": "log", "config": {"message": "hi"}}),
    )
    editor = sign_in(Client(), "eddie", "editor")

    response = apply_first_step(
        editor, workflow, {"config.message": "key {{ secrets.api }}", "step.id": "s"}
    )
    assert "secrets cannot be used here" in error_box(response.content.decode(), "config-message")

    leaky = one_step(MISPLACED[0][0])
    page = post(editor, EDIT.format(workflow.slug) + "publish", leaky, note="n").content.decode()
    assert 'id="publish-refused"' in page and "/steps/0/config/data/k" in page
    workflow.refresh_from_db()
    assert workflow.published_version is None
