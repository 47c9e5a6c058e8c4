"""send_email for real: through a loopback SMTP server (aiosmtpd), with its idempotency headers,
refusals, retries and the checks made before connecting.

"By hand" runs go through the real services (ingest, match, execute_step, record_result) in
this process, without the bus or a worker: each queued attempt is executed by the test
(tests/steps_by_hand.py).
"""

from __future__ import annotations

import email
import email.policy

import pytest
from aiosmtpd.controller import Controller

from orchestrator.embedded_redis import free_port
from tests.factories import cloudevent, definition
from tests.steps_by_hand import context, step_of
from workflows.steps import registry
from workflows.steps.base import StepError


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
