"""`http_request`: call an HTTP endpoint, safely and idempotently.

Sends an Idempotency-Key derived from (run, step), the same on every attempt, so a receiver
that deduplicates sees one effect however often we retry. 5xx, 429 and network errors are
retryable (honouring Retry-After); other 4xx are not.
"""

from __future__ import annotations

import email.utils
import json
import time

import httpx

from ..outbound import OutboundRefused, guarded_client
from .base import StepContext, StepError, StepKind
from .registry import register

MAX_BODY_CHARS = 1_000_000
KEPT_HEADERS = ("content-type", "location", "retry-after", "etag")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@register
class HttpRequest(StepKind):
    name = "http_request"
    title = "HTTP request"
    description = "Call an HTTP API; retries 5xx/429 and sends an Idempotency-Key."
    icon = "globe"
    group = "actions"
    side_effects = True
    config_schema = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "method": {
                "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
                "default": "POST",
            },
            "url": {"type": "string", "pattern": "^https?://", "maxLength": 4096},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "query": {"type": "object", "additionalProperties": {"type": "string"}},
            "json": {},
            "form": {"type": "object", "additionalProperties": {"type": "string"}},
            "send_event": {
                "type": "boolean",
                "description": "send the triggering event's data as the JSON body",
            },
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        },
        "not": {"required": ["json", "form"]},
    }

    def execute(self, config, ctx: StepContext):
        method = config.get("method", "POST")
        # Ours replaces a configured one in any letter case; two such headers would reach the
        # receiver, and it might deduplicate on the wrong one.
        headers = {k: v for k, v in config.get("headers", {}).items()
                   if k.lower() != "idempotency-key"}
        headers["Idempotency-Key"] = ctx.idempotency_key
        kwargs: dict = {"params": config.get("query"), "headers": headers}
        if "json" in config:
            kwargs["json"] = config["json"]
        elif "form" in config:
            kwargs["data"] = config["form"]
        elif config.get("send_event"):
            kwargs["json"] = ctx.event.get("data")
        timeout = float(config.get("timeout_seconds", 30))
        try:
            with guarded_client(ctx.outbound_allow, timeout=timeout) as client:
                client.follow_redirects = True
                client.max_redirects = 5
                response = client.request(method, config["url"], **kwargs)
        except OutboundRefused as exc:
            raise StepError(str(exc), retryable=False) from exc
        except httpx.TooManyRedirects as exc:
            raise StepError(f"too many redirects: {exc}", retryable=False) from exc
        except httpx.TransportError as exc:
            raise StepError(f"{type(exc).__name__}: {exc}", retryable=True) from exc

        if response.status_code >= 500 or response.status_code == 429:
            raise StepError(
                f"{method} {config['url']} answered {response.status_code}",
                retryable=True,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if response.status_code >= 400:
            raise StepError(f"{method} {config['url']} answered {response.status_code}")
        return {
            "status": response.status_code,
            "headers": {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS},
            "body": _body(response),
        }


def _body(response: httpx.Response):
    text = response.text[:MAX_BODY_CHARS]
    if "json" in response.headers.get("content-type", ""):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
