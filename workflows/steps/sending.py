"""Sending a CloudEvent out of Signalbox to one destination: a broker connection and a
target on it, or an HTTP endpoint. Shared by the `publish` step (one destination, its own
config) and `emit_event` (its `to` list), so both check, send, confirm and fail alike.

A destination is `{"connection", "target"}` or `{"url", "headers"}`, with `mode` and
`timeout_seconds`. Failures are StepErrors with the sink's code (`amqp.unreachable`,
`http.503`, …), retryable when trying again may succeed; a destination that cannot work
(an unknown connection, a target option the kind does not know) is `invalid_target`.
"""

from __future__ import annotations

import re
from typing import Any

from workflows.steps.base import StepContext, StepError
from workflows.steps.http_request import HttpRequest, _send, parse_retry_after

# What names one destination: the properties of a `publish` config and of each `to` item.
# The CloudEvent a step builds (emit_event, publish): its attributes and data.
EVENT_PROPERTIES: dict[str, Any] = {
    "type": {"type": "string", "minLength": 1, "maxLength": 255},
    "subject": {"type": "string", "maxLength": 1024},
    "source": {
        "type": "string",
        "maxLength": 1024,
        "description": "default: /signalbox/runs/<run id>",
    },
    "data": {"description": "any JSON; {{ … }} inside strings"},
    "partitionkey": {"type": "string", "maxLength": 255},
}

DESTINATION_PROPERTIES: dict[str, Any] = {
    "connection": {"type": "string", "minLength": 1, "maxLength": 100},
    "target": {
        "type": "object",
        "description": "where on the connection: amqp {exchange, routing_key, "
        "mandatory}, nats {subject, jetstream}, mqtt {topic, qos, retain}, "
        "kafka {topic, key}",
    },
    "url": {"type": "string", "pattern": "^https?://", "maxLength": 4096},
    "headers": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "extra HTTP headers (url only)",
    },
    "mode": {"enum": ["binary", "structured"], "default": "binary"},
    "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
}
# Either a connection and a target on it, or a URL.
ONE_DESTINATION: list[dict[str, Any]] = [
    {"required": ["connection", "target"], "not": {"required": ["url"]}},
    {
        "required": ["url"],
        "not": {"anyOf": [{"required": ["connection"]}, {"required": ["target"]}]},
    },
]
DESTINATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": DESTINATION_PROPERTIES,
    "oneOf": ONE_DESTINATION,
}

# CloudEvents HTTP binding, binary mode: a header value is printable US-ASCII; space, `"`
# and `%` and everything else are percent-encoded as UTF-8 (spec 1.0.2, 3.1.3.2).
_KEEP = re.compile(r"[\x21\x23\x24\x26-\x7e]")


def header_value(text: str) -> str:
    return "".join(
        c if _KEEP.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in text
    )


def secret_destination_problems(kind, destination, prefix: str = "") -> list[tuple[str, str]]:
    """A destination's secrets go only in HTTP headers, to a host the definition fixes."""
    if "url" not in destination:
        return [(f"{prefix}/headers", "headers are sent to a url only")]
    return [
        (prefix + path, message)
        for path, message in HttpRequest.secret_destination_problems(kind, destination)
    ]


def send_event(destination: dict, envelope, ctx: StepContext, *, kind: str) -> dict:
    """Send `envelope` to one destination and wait for the other side's confirm; returns its
    receipt (`connection`, `kind`, … or `url`, `status`). Raises StepError; `kind` names the
    step in messages."""
    from workflows.events.connectors import registry
    from workflows.events.connectors.base import InvalidConnection
    from workflows.events.connectors.sink import SinkError, encode

    mode = destination.get("mode", "binary")
    message = encode(envelope, mode=mode)
    if "url" in destination:
        return _post(destination, message, ctx)
    if ctx.connection is None:
        raise StepError(f"{kind} needs the services, which this context does not provide")
    name = str(destination["connection"])
    try:
        connection = ctx.connection(name)
        sink_class = registry.all_sinks().get(connection.kind)
        if sink_class is None:
            raise InvalidConnection(f"a {connection.kind} connection cannot be published to")
        target = sink_class.check_target(dict(destination["target"]), mode=mode)
    except InvalidConnection as exc:
        raise StepError(f"{kind}: {exc}", code="invalid_target") from exc
    timeout = float(destination.get("timeout_seconds", 10))
    try:
        receipt = sink_class(connection).publish(message, target, timeout=timeout)
    except SinkError as exc:
        raise StepError(str(exc), retryable=exc.retryable, code=exc.code) from exc
    return {"connection": name, "kind": connection.kind, **receipt}


def _post(destination, message, ctx: StepContext) -> dict:
    """The HTTP binding: POST the event, binary (ce-* headers) or structured."""
    url = destination["url"]
    # Ours win over configured ones, in any letter case: two would reach the receiver.
    ours = {"content-type", "idempotency-key"}
    headers = {
        k: "" if v is None else str(v)
        for k, v in destination.get("headers", {}).items()
        if k.lower() not in ours and not k.lower().startswith("ce-")
    }
    for name, value in message.attributes.items():
        headers[f"ce-{name}"] = header_value(value)
    if message.content_type:
        headers["Content-Type"] = message.content_type
    headers["Idempotency-Key"] = ctx.idempotency_key
    timeout = float(destination.get("timeout_seconds", 30))
    status, response_headers, _body = _send(
        "POST", url, {"headers": headers, "content": message.body}, ctx, timeout
    )
    if status >= 500 or status == 429:
        raise StepError(
            f"POST {url} answered {status}",
            retryable=True,
            retry_after=parse_retry_after(response_headers.get("retry-after")),
            code=f"http.{status}",
        )
    if status >= 300:
        raise StepError(f"POST {url} answered {status}", code=f"http.{status}")
    return {"url": url, "status": status}
