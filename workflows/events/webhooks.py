"""Webhook triggers: create them, and turn an authentic request into an ingested CloudEvent."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from workflows.events import push_formats
from workflows.events import webhook_auth as verification
from workflows.events.envelope import InvalidEvent, loads_json, validate
from workflows.events.intake import ingest_event
from workflows.events.models import Event, Webhook
from workflows.events.push_fetch import fetch
from workflows.infra import crypto, tracing

__all__ = [
    "InvalidWebhook",
    "Receipt",
    "UnknownWebhook",
    "UnreadableBody",
    "UnreadableSecret",
    "UnsupportedBody",
    "WebhookExists",
    "create_webhook",
    "hook_path",
    "receive_webhook",
    "webhook_as_json",
    "webhook_handshake",
]

SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,100}$")
# CloudEvents allows any non-empty string; we keep types readable and free of whitespace.
EVENT_TYPE = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_DELIVERY_ID = 255
MAX_FORM_FIELDS = 1000
FORM = "application/x-www-form-urlencoded"
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class InvalidWebhook(ValueError):
    """A webhook cannot be created as asked. `field` names the offending input."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class WebhookExists(InvalidWebhook):
    """The slug is taken."""


class UnknownWebhook(Exception):
    """No enabled webhook has this slug."""


class UnsupportedBody(Exception):
    """The body's content type is neither JSON nor a form."""


class UnreadableBody(Exception):
    """The body (or the delivery id) cannot be turned into an event."""


class UnreadableSecret(Exception):
    """The stored secret does not decrypt (the encryption key changed) or is empty."""


def hook_path(slug: str) -> str:
    return f"/hooks/{slug}"


def create_webhook(
    *,
    slug: str,
    event_type: str,
    auth_mode: str = "standard",
    secret: str | None = None,
    header_name: str | None = None,
    push_format: str = push_formats.registry.PLAIN,
    format_options: Any = None,
) -> tuple[Webhook, str | None]:
    """Create a webhook trigger; return it and its plaintext secret, which is stored only
    encrypted and never shown again. A missing secret is generated (``whsec_...`` for the
    standard mode). Raises InvalidWebhook."""
    options = check_format(push_format, auth_mode, format_options)
    if not isinstance(slug, str) or not SLUG.match(slug):
        raise InvalidWebhook("slug", "1-100 letters, digits, hyphens or underscores")
    if not isinstance(event_type, str) or not EVENT_TYPE.match(event_type):
        raise InvalidWebhook("event_type", "1-255 printable characters without spaces")
    if auth_mode not in verification.MODES:
        raise InvalidWebhook("auth_mode", f"one of {', '.join(verification.MODES)}")
    if secret is not None and not isinstance(secret, str):
        raise InvalidWebhook("secret", "must be a string")
    if header_name is not None and auth_mode != "header":
        raise InvalidWebhook("header_name", "only the header auth mode reads a header")
    header_name = header_name or Webhook._meta.get_field("header_name").default
    if auth_mode == "header":
        try:
            verification.check_header_name(header_name)
        except ValueError as exc:
            raise InvalidWebhook("header_name", str(exc)) from exc
    if not secret:
        secret = verification.new_secret(auth_mode)
    try:
        verification.check_secret(auth_mode, secret)
    except ValueError as exc:
        raise InvalidWebhook("secret", str(exc)) from exc
    try:
        with transaction.atomic():
            webhook = Webhook.objects.create(
                slug=slug,
                event_type=event_type,
                auth_mode=auth_mode,
                secret_encrypted=crypto.encrypt(secret) if secret else "",
                header_name=header_name,
                push_format=push_format,
                format_options=options,
            )
    except IntegrityError as exc:
        raise WebhookExists("slug", f"a webhook named {slug!r} already exists") from exc
    return webhook, secret


@dataclass(frozen=True)
class Receipt:
    """What a delivery stored: its events (none for a control message such as an SNS
    subscription confirmation, which is answered with `reply`), and whether any of them is
    new (a delivery id seen before starts nothing)."""

    events: list[Event]
    created: bool
    reply: dict[str, Any] | None = None


def receive_webhook(*, slug: str, headers: Mapping[str, str], body: bytes) -> Receipt:
    """Authenticate the request, turn its body into CloudEvents (for the plain format one
    event of the webhook's type, for a cloud push format what it carries) and ingest them.

    Raises UnknownWebhook, verification.SignatureError, UnsupportedBody, UnreadableBody,
    UnreadableSecret, or SchemaViolation (from ingest) when the type has a schema.
    """
    webhook = Webhook.objects.filter(slug=slug, enabled=True).first()
    if webhook is None:
        raise UnknownWebhook(slug)
    try:
        secret = crypto.decrypt(webhook.secret_encrypted) if webhook.secret_encrypted else ""
    except InvalidToken as exc:
        raise UnreadableSecret(slug) from exc
    if not secret and webhook.auth_mode != "none":
        # Fail closed: an HMAC under an empty key is one anybody can compute.
        raise UnreadableSecret(slug)
    # Authenticate before looking at the body: an outsider learns nothing but "401".
    delivery_id = verification.verify(
        webhook.auth_mode,
        secret=secret,
        headers=headers,
        body=body,
        header_name=webhook.header_name,
    )
    reader = push_formats.get_format(webhook.push_format)
    if reader is not None:
        return read_pushed(webhook, reader, headers, body)
    data = parse_body(headers, body, github=webhook.auth_mode == "github")
    envelope = to_envelope(webhook, delivery_id, data, headers)
    ((event, created),) = ingest_traced(webhook, [envelope], headers)
    return Receipt([event], created)


def ingest_traced(
    webhook: Webhook, envelopes: list, headers: Mapping[str, str]
) -> list[tuple[Event, bool]]:
    """Store a delivery's events together (a batch is all or nothing) under one ingest
    span, which continues the request's `traceparent` header when it has one; the bus
    entries name the span, so the runs' spans hang under it (workflows/infra/tracing.py)."""
    traced = tracing.ingest(
        envelopes,
        header=_header(headers, "traceparent"),
        tracestate=_header(headers, "tracestate"),
        channel="webhook",
        attributes={
            "signalbox.webhook": webhook.slug,
            "signalbox.push_format": webhook.push_format,
        },
    )
    try:
        with transaction.atomic():
            results = [
                ingest_event(envelope=envelope, channel="webhook", trace=traced.traceparent)
                for envelope in envelopes
            ]
    except Exception as exc:
        traced.end(error=type(exc).__name__)
        raise
    traced.end(stored=sum(1 for _event, created in results if created))
    return results


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def check_format(name: Any, auth_mode: str, options: Any) -> dict[str, Any]:
    if name not in push_formats.NAMES:
        raise InvalidWebhook("push_format", f"one of {', '.join(push_formats.NAMES)}")
    reader = push_formats.get_format(name)
    if reader is None:
        if options:
            raise InvalidWebhook("format_options", "the plain format takes no options")
        return {}
    if not reader.uses_auth_mode and auth_mode != "none":
        raise InvalidWebhook(
            "auth_mode", f"{reader.label} messages carry their own signature: use none"
        )
    if options is not None and not isinstance(options, dict):
        raise InvalidWebhook("format_options", "must be a JSON object")
    try:
        return reader.check_options(options or {})
    except ValueError as exc:
        raise InvalidWebhook("format_options", str(exc)) from exc


def format_context(webhook: Webhook) -> push_formats.FormatContext:
    return push_formats.FormatContext(
        slug=webhook.slug,
        event_type=webhook.event_type,
        options=webhook.format_options or {},
        fetch=fetch,
        now=timezone.now().timestamp(),
        settings=settings.SIGNALBOX,
    )


def read_pushed(webhook: Webhook, reader, headers: Mapping[str, str], body: bytes) -> Receipt:
    """A cloud push delivery: its events committed together (a batch is all or nothing)."""
    try:
        delivery = reader.read(headers, body, format_context(webhook))
    except push_formats.PushFormatError as exc:
        raise UnreadableBody(str(exc)) from exc
    if not delivery.envelopes:
        return Receipt([], False, delivery.reply or {})
    results = ingest_traced(webhook, list(delivery.envelopes), headers)
    return Receipt([event for event, _c in results], any(c for _e, c in results))


def webhook_handshake(*, slug: str, headers: Mapping[str, str]) -> dict[str, str] | None:
    """The headers that answer a push format's OPTIONS validation request (Event Grid's
    abuse-protection handshake), or None when the webhook does not take it. Raises
    UnknownWebhook."""
    webhook = Webhook.objects.filter(slug=slug, enabled=True).first()
    if webhook is None:
        raise UnknownWebhook(slug)
    reader = push_formats.get_format(webhook.push_format)
    if reader is None:
        return None
    return reader.handshake(headers, format_context(webhook))


def parse_body(headers: Mapping[str, str], body: bytes, *, github: bool = False) -> Any:
    """JSON (application/json or any +json type) as is; a form as a dict whose repeated
    fields become lists. GitHub's form deliveries wrap the JSON in a `payload` field: that
    is unwrapped for the github mode."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        if media == "application/json" or media.endswith("+json"):
            return loads_json(body)
        if media == FORM:
            form = parse_form(body)
            if github and set(form) == {"payload"} and isinstance(form["payload"], str):
                return loads_json(form["payload"].encode(), what="payload")
            return form
    except InvalidEvent as exc:
        raise UnreadableBody(str(exc)) from exc
    raise UnsupportedBody(media or "(none)")


def parse_form(body: bytes) -> dict[str, Any]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except UnicodeDecodeError as exc:
        raise InvalidEvent([{"attribute": "(body)", "message": f"not UTF-8: {exc}"}]) from exc
    except ValueError as exc:  # too many fields
        raise InvalidEvent([{"attribute": "(body)", "message": str(exc)}]) from exc
    form: dict[str, Any] = {}
    for name, value in pairs:
        if name not in form:
            form[name] = value
        elif isinstance(form[name], list):
            form[name].append(value)
        else:
            form[name] = [form[name], value]
    return form


def to_envelope(webhook: Webhook, delivery_id: str | None, data: Any, headers: Mapping[str, str]):
    # Without a delivery id every request is a new event: no deduplication for that request.
    event_id = delivery_id if delivery_id is not None else str(uuid.uuid4())
    if len(event_id) > MAX_DELIVERY_ID or not event_id.isprintable():
        raise UnreadableBody(f"the delivery id must be 1-{MAX_DELIVERY_ID} printable characters")
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": hook_path(webhook.slug),
        "type": webhook.event_type,
        "time": timezone.now().isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
    }
    traceparent = next((v for k, v in headers.items() if k.lower() == "traceparent"), "")
    if TRACEPARENT.match(traceparent.strip()):
        attributes["traceparent"] = traceparent.strip()
    try:
        return validate(attributes, data=data, data_is_base64=False)
    except InvalidEvent as exc:  # only reachable through odd ids; say so plainly
        raise UnreadableBody(str(exc)) from exc


def webhook_as_json(webhook: Webhook) -> dict[str, Any]:
    """The public view of a webhook: never its secret."""
    out = {
        "slug": webhook.slug,
        "event_type": webhook.event_type,
        "auth_mode": webhook.auth_mode,
        "push_format": webhook.push_format,
        "format_options": webhook.format_options or {},
        "enabled": webhook.enabled,
        "path": hook_path(webhook.slug),
        "created_at": webhook.created_at.isoformat(),
    }
    if webhook.auth_mode == "header":
        out["header_name"] = webhook.header_name
    return out
