"""Amazon EventBridge API destinations.

An API destination posts each matched event as the EventBridge event JSON (unless an input
transformer reshapes it: then use the `plain` format). EventBridge authenticates through its
connection's API key header, which is this webhook's `header` auth mode (the key is the
secret, its header name `header_name`); retries resend the same event `id`, so they are
deduplicated.

Mapping: id = id, source = source (`aws.s3`, `com.example.orders`), type = the webhook's
event type, time = time, data = detail, and the EventBridge envelope in extensions:
`awsdetailtype`, `awsaccount`, `awsregion`, `awsresources` (comma-separated).

https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-events-structure.html
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workflows.events.envelope import InvalidEvent, validate
from workflows.events.push_formats.base import (
    Delivery,
    FormatContext,
    PushFormatError,
    json_object,
    no_options,
    text_field,
)

name = "eventbridge"
label = "Amazon EventBridge API destination"
uses_auth_mode = True
check_options = no_options


def handshake(headers: Mapping[str, str], ctx: FormatContext) -> dict[str, str] | None:
    return None


def read(headers: Mapping[str, str], body: bytes, ctx: FormatContext) -> Delivery:
    event = json_object(body, "EventBridge")
    for field in ("id", "source", "detail-type", "time"):
        text_field(event, field, "EventBridge event")
    if "detail" not in event:
        raise PushFormatError("EventBridge event: detail is missing")
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event["id"],
        "source": event["source"],
        "type": ctx.event_type,
        "time": event["time"],
        "datacontenttype": "application/json",
        "awsdetailtype": event["detail-type"],
    }
    for field in ("account", "region"):
        if isinstance(event.get(field), str) and event[field]:
            attributes[f"aws{field}"] = event[field]
    resources = event.get("resources")
    if isinstance(resources, list) and resources and all(isinstance(r, str) for r in resources):
        attributes["awsresources"] = ",".join(resources)
    try:
        return Delivery([validate(attributes, data=event["detail"], data_is_base64=False)])
    except InvalidEvent as exc:
        raise PushFormatError(f"EventBridge event: {exc}") from exc
