"""The manual producer: a person fires an event from the dashboard or the CLI."""

from __future__ import annotations

import uuid
from typing import Any

from django.utils import timezone

from workflows.events.envelope import path_segment, validate
from workflows.events.intake import ingest_event
from workflows.events.models import Event

MANUAL_CHANNEL = "manual"


def manual_source(username: str) -> str:
    return f"/signalbox/manual/{path_segment(username)}"


def send_manual_event(
    *,
    event_type: str,
    data: Any,
    source: str,
    subject: str = "",
    event_id: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> tuple[Event, bool]:
    """Build a CloudEvent (a new UUID id unless given, the current time) and ingest it.

    Goes through the same validation and schema check as HTTP ingest. Raises InvalidEvent
    (an attribute is wrong) or SchemaViolation (data breaks the type's schema). Returns
    (event, created); created is False when (source, id) was already stored.
    """
    attributes: dict[str, Any] = {
        **(extensions or {}),
        "specversion": "1.0",
        "id": event_id if event_id is not None else str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": timezone.now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if data is not None:
        attributes["datacontenttype"] = "application/json"
    if subject:
        attributes["subject"] = subject
    envelope = validate(attributes, data=data, data_is_base64=False)
    return ingest_event(envelope=envelope, channel=MANUAL_CHANNEL)
