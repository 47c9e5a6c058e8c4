"""`send_email`: send a message through Django's configured mail backend.

The message carries an `Idempotency-Key` header and a Message-ID derived from it, the same on
every attempt, so a relay or mailbox that deduplicates keeps one copy when a retry follows a
send whose outcome we never learnt. Error codes, for retry policies:

    smtp.<code>        the server refused (4xx retryable, 5xx not), e.g. smtp.550
    network            no server, or it hung up
    timeout            no answer within timeout_seconds
    invalid_address    a recipient or sender address is not an email address
    invalid_header     a header (the subject) holds a line break: refused, never sent
"""

from __future__ import annotations

import smtplib

from django.core.exceptions import ValidationError
from django.core.mail import BadHeaderError, EmailMultiAlternatives, get_connection
from django.core.validators import validate_email

from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.registry import register

ADDRESS_LIST = {"type": "array", "maxItems": 50, "items": {"type": "string", "maxLength": 320}}


def _addresses(value, field: str) -> list[str]:
    # A whole-string `{{ … }}` may render a list, or one address as a string.
    values = value if isinstance(value, list) else [value]
    addresses = []
    for item in values:
        address = str(item).strip()
        try:
            validate_email(address)
        except ValidationError:
            raise StepError(
                f"{field}: {address!r} is not an email address", code="invalid_address"
            ) from None
        addresses.append(address)
    return addresses


def _smtp_error(exc: smtplib.SMTPException) -> StepError:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _message in exc.recipients.values()]
        transient = all(400 <= code < 500 for code in codes)
        refused = ", ".join(f"{r} ({code})" for r, (code, _m) in exc.recipients.items())
        return StepError(
            f"mail server refused every recipient: {refused}",
            retryable=transient,
            code=f"smtp.{codes[0] if codes else 550}",
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        detail = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        return StepError(
            f"mail server answered {exc.smtp_code}: {detail}",
            retryable=400 <= exc.smtp_code < 500,
            code=f"smtp.{exc.smtp_code}",
        )
    return StepError(f"mail server: {type(exc).__name__}: {exc}", retryable=True, code="network")


@register
class SendEmail(StepKind):
    name = "send_email"
    title = "Send email"
    description = "Send an email through the configured mail backend."
    icon = "mail"
    group = "actions"
    side_effects = True
    config_schema = {
        "type": "object",
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
        "properties": {
            "to": {**ADDRESS_LIST, "minItems": 1},
            "cc": ADDRESS_LIST,
            "bcc": ADDRESS_LIST,
            "reply_to": ADDRESS_LIST,
            "subject": {"type": "string", "maxLength": 500},
            "body": {"type": "string", "maxLength": 100000, "description": "plain text"},
            "html": {"type": "string", "maxLength": 500000, "description": "optional HTML part"},
            "from": {"type": "string", "description": "default: DEFAULT_FROM_EMAIL"},
            "smtp_username": {
                "type": "string",
                "maxLength": 1024,
                "description": "default: EMAIL_HOST_USER",
            },
            "smtp_password": {
                "type": "string",
                "maxLength": 4096,
                "description": "default: EMAIL_HOST_PASSWORD; may be {{ secrets.<name> }}",
            },
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        },
    }
    # Credentials only go to the mail server; the message and the output never hold them.
    secret_fields = ("/smtp_username", "/smtp_password")

    def execute(self, config, ctx: StepContext):
        sender = _addresses(config["from"], "from")[0] if config.get("from") else None
        message_id = f"<{ctx.idempotency_key}@signalbox>"
        message = EmailMultiAlternatives(
            subject=str(config["subject"]),
            body=str(config["body"]),
            from_email=sender,
            to=_addresses(config["to"], "to"),
            cc=_addresses(config.get("cc", []), "cc"),
            bcc=_addresses(config.get("bcc", []), "bcc"),
            reply_to=_addresses(config.get("reply_to", []), "reply_to"),
            headers={"Idempotency-Key": ctx.idempotency_key, "Message-ID": message_id},
            connection=get_connection(
                fail_silently=False,
                timeout=float(config.get("timeout_seconds", 30)),
                **{
                    option: str(config[f"smtp_{option}"])
                    for option in ("username", "password")
                    if config.get(f"smtp_{option}")
                },
            ),
        )
        if config.get("html"):
            message.attach_alternative(str(config["html"]), "text/html")
        try:
            sent = message.send(fail_silently=False)
        except BadHeaderError as exc:
            # Line breaks in a header would let data add headers (Bcc: …) to the message.
            raise StepError(f"refusing to send: {exc}", code="invalid_header") from exc
        except smtplib.SMTPException as exc:
            raise _smtp_error(exc) from exc
        except TimeoutError as exc:
            raise StepError(
                "mail server: no answer in time", retryable=True, code="timeout"
            ) from exc
        except OSError as exc:
            raise StepError(f"mail server: {exc}", retryable=True, code="network") from exc
        return {"sent": sent, "to": message.to, "message_id": message_id}
