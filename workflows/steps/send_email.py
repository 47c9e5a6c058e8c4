"""`send_email`: send a message through Django's configured mail backend."""

from __future__ import annotations

from django.core.mail import EmailMessage

from .base import StepContext, StepError, StepKind
from .registry import register


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
            "to": {"type": "array", "minItems": 1, "maxItems": 50, "items": {"type": "string"}},
            "subject": {"type": "string", "maxLength": 500},
            "body": {"type": "string", "maxLength": 100000},
            "from": {"type": "string"},
        },
    }

    def execute(self, config, ctx: StepContext):
        message = EmailMessage(
            subject=config["subject"],
            body=config["body"],
            from_email=config.get("from") or None,
            to=config["to"],
            # Receivers and relays that deduplicate can use it; it is stable across attempts.
            headers={"Idempotency-Key": ctx.idempotency_key,
                     "Message-ID": f"<{ctx.idempotency_key}@signalbox>"},
        )
        try:
            sent = message.send(fail_silently=False)
        except OSError as exc:
            raise StepError(f"mail server: {exc}", retryable=True, code="network") from exc
        return {"sent": sent, "to": config["to"], "message_id": message.extra_headers["Message-ID"]}
