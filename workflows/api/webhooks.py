"""Webhook triggers over HTTP: the public receiver POST /hooks/<slug>, and the management API
under /api/v1/webhooks."""

from __future__ import annotations

import functools
import logging

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from workflows.api.auth import token_required
from workflows.api.bodies import BodyTooLarge, read_limited
from workflows.api.problems import problem
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.events.models import Webhook
from workflows.events.push_formats import FetchFailed
from workflows.events.schemas import SchemaViolation
from workflows.events.webhook_auth import SignatureError
from workflows.events.webhooks import (
    InvalidWebhook,
    UnknownWebhook,
    UnreadableBody,
    UnreadableSecret,
    UnsupportedBody,
    WebhookExists,
    create_webhook,
    hook_path,
    receive_webhook,
    webhook_as_json,
    webhook_handshake,
)

log = logging.getLogger("signalbox.webhooks")

MAX_MANAGEMENT_BYTES = 64 * 1024
CREATE_FIELDS = {
    "slug",
    "event_type",
    "auth_mode",
    "secret",
    "header_name",
    "push_format",
    "format_options",
}


def _problems_only(view):
    """/hooks/ is outside /api/, where ApiProblemMiddleware turns crashes into problems:
    answer problem+json here too, whatever happens."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except Exception:
            log.exception("webhook error on %s %s", request.method, request.path)
            return problem(500, "Internal error", "the error was logged", kind="internal")

    return wrapper


def _unauthorized(detail: str) -> JsonResponse:
    response = problem(401, "Invalid webhook signature", detail, kind="webhook-unauthorized")
    # Not a bearer-token endpoint: name what this endpoint wants instead.
    response["WWW-Authenticate"] = 'Signature realm="signalbox-webhooks"'
    return response


@csrf_exempt  # called by other systems, authenticated by signature, never by a cookie
@_problems_only
def receive(request, slug: str):
    """POST /hooks/<slug>: the body becomes events, as the webhook's push format reads it (a
    plain webhook: any JSON or form body, one event of its type). OPTIONS answers a push
    format's validation handshake (Event Grid)."""
    if request.method == "OPTIONS":
        return handshake(request, slug)
    if request.method != "POST":
        response = problem(
            405, "Method not allowed", "webhooks are delivered with POST", kind="method-not-allowed"
        )
        response["Allow"] = "POST, OPTIONS"
        return response
    try:
        body = read_limited(request, settings.SIGNALBOX["MAX_EVENT_BYTES"])
        receipt = receive_webhook(slug=slug, headers=request.headers, body=body)
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except UnknownWebhook:
        return problem(
            404, "No such webhook", f"no enabled webhook at {hook_path(slug)}", kind="not-found"
        )
    except SignatureError as exc:
        return _unauthorized(str(exc))
    except UnsupportedBody as exc:
        return problem(
            415,
            "Unsupported media type",
            f"got {exc}; send application/json (or any +json type) or "
            "application/x-www-form-urlencoded",
            kind="unsupported-media-type",
        )
    except UnreadableBody as exc:
        return problem(400, "Invalid webhook body", str(exc), kind="invalid-body")
    except FetchFailed as exc:
        log.warning("webhook %s: %s", slug, exc)
        return problem(502, "Cannot verify the delivery", str(exc), kind="upstream-unavailable")
    except SchemaViolation as exc:
        return problem(
            400,
            "Event data does not match its schema",
            str(exc),
            kind="schema-violation",
            errors=[{"type": exc.event_type, "schema_version": exc.version, "errors": exc.errors}],
        )
    except UnreadableSecret:
        log.error(
            "webhook %s has an empty secret, or one that does not decrypt (was the "
            "encryption key changed?)",
            slug,
        )
        return problem(
            500, "Webhook misconfigured", "its secret cannot be read; see the logs", kind="internal"
        )
    if receipt.reply is not None:
        return JsonResponse(receipt.reply, status=200)
    results = [
        {"id": e.pk, "source": e.source, "ce_id": e.ce_id, "type": e.type} for e in receipt.events
    ]
    result = results[0] if len(results) == 1 else {"events": results}
    result["duplicate"] = not receipt.created
    return JsonResponse(result, status=202 if receipt.created else 200)


def handshake(request, slug: str):
    try:
        headers = webhook_handshake(slug=slug, headers=request.headers)
    except UnknownWebhook:
        return problem(
            404, "No such webhook", f"no enabled webhook at {hook_path(slug)}", kind="not-found"
        )
    if headers is None:
        response = problem(
            403,
            "Validation request refused",
            "this webhook takes no validation request from that origin",
            kind="handshake-refused",
        )
    else:
        response = JsonResponse({}, status=200)
        for name, value in headers.items():
            response[name] = value
    response["Allow"] = "POST, OPTIONS"
    return response


@token_required("viewer")
def list_webhooks(request):
    hooks = Webhook.objects.order_by("slug")
    return JsonResponse({"webhooks": [_with_url(request, webhook_as_json(h)) for h in hooks]})


@token_required("admin")
def post_webhook(request):
    try:
        raw = loads_json(read_limited(request, MAX_MANAGEMENT_BYTES))
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except InvalidEvent as exc:
        return problem(400, "Invalid JSON", str(exc), kind="invalid-json")
    if not isinstance(raw, dict):
        return problem(400, "Invalid webhook", "send a JSON object", kind="invalid-webhook")
    unknown = sorted(set(raw) - CREATE_FIELDS)
    if unknown:
        return problem(
            400,
            "Invalid webhook",
            f"unknown field(s): {', '.join(unknown)}",
            kind="invalid-webhook",
            errors=[{"field": f} for f in unknown],
        )
    try:
        webhook, secret = create_webhook(
            slug=raw.get("slug"),
            event_type=raw.get("event_type"),
            auth_mode=raw.get("auth_mode", "standard"),
            secret=raw.get("secret"),
            header_name=raw.get("header_name"),
            push_format=raw.get("push_format", "plain"),
            format_options=raw.get("format_options"),
        )
    except InvalidWebhook as exc:
        status = 409 if isinstance(exc, WebhookExists) else 400
        return problem(
            status,
            "Invalid webhook",
            str(exc),
            kind="invalid-webhook",
            errors=[{"field": exc.field, "message": str(exc)}],
        )
    body = _with_url(request, webhook_as_json(webhook))
    body["secret"] = secret  # shown this once; only its encryption is stored
    response = JsonResponse(body, status=201)
    response["Cache-Control"] = "no-store"
    response["Location"] = body["url"]
    return response


@csrf_exempt  # token-authenticated in the views it dispatches to
def webhooks_endpoint(request):
    """/api/v1/webhooks: GET lists (viewer), POST creates (admin)."""
    if request.method == "GET":
        return list_webhooks(request)
    if request.method == "POST":
        return post_webhook(request)
    response = problem(405, "Method not allowed", f"{request.method} {request.path}")
    response["Allow"] = "GET, POST"
    return response


def _with_url(request, data: dict) -> dict:
    data["url"] = request.build_absolute_uri(data["path"])
    return data
