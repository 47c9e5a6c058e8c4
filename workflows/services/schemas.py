"""The schema registry at ingest: validate an event's data against its type's schema."""

from __future__ import annotations

import re
from dataclasses import dataclass

import jsonschema

from ..events.envelope import Envelope
from ..models import EventSchema, EventType

# A dataschema URI names a registry version by ending in /versions/<n>, e.g.
# https://signalbox.example/api/v1/schemas/com.example.order.placed/versions/2
VERSION_IN_URI = re.compile(r"/versions/(\d+)/?$")


class SchemaViolation(Exception):
    def __init__(self, event_type: str, version: int | None, errors: list[dict[str, str]]):
        self.event_type, self.version, self.errors = event_type, version, errors
        super().__init__(
            f"{event_type} schema v{version}: "
            + "; ".join(f"{e['path']}: {e['message']}" for e in errors)
        )


@dataclass(frozen=True)
class SchemaCheck:
    validation: str  # "valid" or "unvalidated"
    version: int | None = None


def schema_errors(schema: dict, data) -> list[dict[str, str]]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        {"path": "/" + "/".join(map(str, err.absolute_path)), "message": err.message}
        for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ][:50]


def check_event_data(envelope: Envelope) -> SchemaCheck:
    """Validate against the version named by `dataschema`, else the latest. Raises
    SchemaViolation; types without a registered schema are accepted as unvalidated."""
    event_type = EventType.objects.filter(name=envelope.type).first()
    if event_type is None:
        return SchemaCheck("unvalidated")
    schemas = EventSchema.objects.filter(event_type=event_type)
    named = VERSION_IN_URI.search(envelope.dataschema or "")
    if named:
        schema = schemas.filter(version=int(named.group(1))).first()
        if schema is None:
            raise SchemaViolation(
                envelope.type, int(named.group(1)),
                [{"path": "/", "message": "dataschema names a version that is not registered"}],
            )
    else:
        schema = schemas.order_by("-version").first()
    if schema is None:
        return SchemaCheck("unvalidated")
    if envelope.data_is_base64:
        raise SchemaViolation(envelope.type, schema.version,
                              [{"path": "/", "message": "binary data cannot match a JSON Schema"}])
    errors = schema_errors(schema.schema, envelope.data)
    if errors:
        raise SchemaViolation(envelope.type, schema.version, errors)
    return SchemaCheck("valid", schema.version)
