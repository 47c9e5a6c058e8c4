"""A broker message as a CloudEvent, after the CloudEvents protocol bindings (AMQP, NATS,
MQTT): structured mode when the content type is `application/cloudevents+json` (or, with
no content type and no attribute headers, when the body is a JSON object with a
`specversion`), binary mode otherwise (attributes from headers, the body is the data).

A message that names no `source` gets `<kind>://<connection>/<key>`, no `id` the broker's
stable id for it (or a digest of its content), no `type` the connection's default type.
The broker's natural key becomes the `partitionkey` extension unless the event has one,
so the bus keeps per-key order.
"""

from __future__ import annotations

import hashlib
import json

from workflows.events.connectors.base import Message
from workflows.events.envelope import (
    Envelope,
    InvalidEvent,
    check_storable,
    from_binary,
    from_structured,
    loads_json,
)
from workflows.events.external_streams import RESERVED_SOURCES

STRUCTURED = "application/cloudevents+json"


def content_digest(message: Message) -> str:
    """A stable id for a message the broker names no id for: a redelivery has the same."""
    digest = hashlib.sha256()
    digest.update(message.key.encode())
    digest.update(b"\0" + message.content_type.encode() + b"\0")
    digest.update(json.dumps(sorted(message.attributes.items())).encode())
    digest.update(b"\0" + message.body)
    return "sha256:" + digest.hexdigest()[:40]


def _is_structured(message: Message) -> bool:
    media = message.content_type.split(";", 1)[0].strip().lower()
    if media == STRUCTURED:
        return True
    if media or "specversion" in message.attributes:
        return False
    return message.body.lstrip()[:1] == b"{" and b'"specversion"' in message.body


def envelope_from_message(
    message: Message, *, kind: str, connection: str, default_type: str = ""
) -> Envelope:
    """The validated envelope; raises InvalidEvent (the message is then dead-lettered)."""
    if _is_structured(message):
        obj = loads_json(message.body, what="(body)")
        if not isinstance(obj, dict):
            raise InvalidEvent(
                [{"attribute": "(body)", "message": "a CloudEvent is a JSON object"}]
            )
        obj.setdefault("specversion", "1.0")
    else:
        obj = None
    fallback = {
        "source": f"{kind}://{connection}/{message.key}",
        "id": message.fallback_id or content_digest(message),
        "type": default_type,
    }
    if obj is not None:
        for name, value in fallback.items():
            if value and name not in obj:
                obj[name] = value
        obj.setdefault("partitionkey", message.key)
        envelope = from_structured(obj)
    else:
        headers = {f"ce-{name}": value for name, value in message.attributes.items()}
        headers.setdefault("ce-specversion", "1.0")
        for name, value in fallback.items():
            if value:
                headers.setdefault(f"ce-{name}", value)
        headers.setdefault("ce-partitionkey", message.key)
        envelope = from_binary(headers, message.body, message.content_type)
    _check_limits(envelope)
    return envelope


def _check_limits(envelope: Envelope) -> None:
    check_storable(envelope)  # lengths and the source's form, as on every other path
    if envelope.source.startswith(RESERVED_SOURCES):
        raise InvalidEvent(
            [{"attribute": "source", "message": "reserved for Signalbox's own events"}]
        )
