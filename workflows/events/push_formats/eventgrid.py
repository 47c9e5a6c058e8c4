"""Azure Event Grid, CloudEvents 1.0 schema.

Before it delivers, Event Grid validates the endpoint with the CloudEvents "Webhook abuse
protection" handshake: an OPTIONS request carrying `WebHook-Request-Origin`, answered with
`WebHook-Allowed-Origin` (and `WebHook-Allowed-Rate`). Deliveries are structured CloudEvents
(`application/cloudevents+json`) or batches (`application/cloudevents-batch+json`); each
event keeps its own type, source and id (Event Grid's retries reuse the id). Authenticate
with the webhook's auth mode: an Event Grid subscription can send a static delivery header,
which is the `header` mode (a secret in the URL's query is not offered: URLs get logged).

Options: `allowed_origins`, the request origins the handshake accepts (default
`eventgrid.azure.net`).

https://learn.microsoft.com/azure/event-grid/cloudevents-schema
https://github.com/cloudevents/spec/blob/main/cloudevents/http-webhook.md#4-abuse-protection
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workflows.events.envelope import InvalidEvent, from_batch, from_structured, loads_json
from workflows.events.push_formats.base import (
    Delivery,
    FormatContext,
    PushFormatError,
    header,
    json_object,
)

name = "eventgrid"
label = "Azure Event Grid (CloudEvents schema)"
uses_auth_mode = True
DEFAULT_ORIGINS = ["eventgrid.azure.net"]
MAX_BATCH = 5000  # Event Grid's own limit is 5,000 events per batch
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - {"allowed_origins"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    origins = options.get("allowed_origins", DEFAULT_ORIGINS)
    if (
        not isinstance(origins, list)
        or not origins
        or not all(isinstance(o, str) and o and o.isprintable() for o in origins)
    ):
        raise ValueError("allowed_origins: a non-empty list of host names")
    return {"allowed_origins": list(origins)}


def handshake(headers: Mapping[str, str], ctx: FormatContext) -> dict[str, str] | None:
    origin = header(headers, "WebHook-Request-Origin").strip()
    if not origin:
        return None
    allowed = ctx.options.get("allowed_origins") or DEFAULT_ORIGINS
    if origin not in allowed and "*" not in allowed:
        return None
    return {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"}


def without_placeholder_schema(event: Any) -> Any:
    """Azure's system events carry `"dataschema": "#"`, which CloudEvents does not allow (an
    absolute URI): it names no schema, so it is dropped rather than refusing the event."""
    if isinstance(event, dict) and event.get("dataschema") == "#":
        return {k: v for k, v in event.items() if k != "dataschema"}
    return event


def read(headers: Mapping[str, str], body: bytes, ctx: FormatContext) -> Delivery:
    media = header(headers, "Content-Type").split(";", 1)[0].strip().lower()
    try:
        if media == BATCH:
            items = loads_json(body)
            if isinstance(items, list):
                items = [without_placeholder_schema(item) for item in items]
            return Delivery(from_batch(items, max_entries=MAX_BATCH))
        if media in (STRUCTURED, "application/json"):
            event = without_placeholder_schema(json_object(body, "Event Grid"))
            return Delivery([from_structured(event)])
    except InvalidEvent as exc:
        raise PushFormatError(f"Event Grid: {exc}") from exc
    raise PushFormatError(f"Event Grid: expected {STRUCTURED} or {BATCH}, got {media or 'none'}")
