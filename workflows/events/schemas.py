"""The schema registry at ingest: validate an event's data against its type's schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import unquote

import jsonschema
from django.db import transaction

from workflows.events.compatibility import MODES, Incompatibility, check_compatibility, check_schema
from workflows.events.envelope import Envelope, SchemaViolation
from workflows.events.models import EventSchema, EventType

# A dataschema URI names a registry version by ending in /versions/<n>, e.g.
# https://signalbox.example/api/v1/schemas/com.example.order.placed/versions/2
VERSION_IN_URI = re.compile(r"(?:/schemas/(?P<type>[^/]+))?/versions/(?P<version>\d+)/?$")


@dataclass(frozen=True)
class SchemaCheck:
    validation: str  # "valid" or "unvalidated"
    version: int | None = None


def schema_errors(schema: dict, data) -> list[dict[str, str]]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        {"path": "/" + "/".join(map(str, err.absolute_path)), "message": err.message}
        for err in sorted(
            validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))
        )
    ][:50]


# The types found to have no schema, remembered only inside `unschemed_types_remembered`:
# the bus consumer handling one read, whose runs ingest their run events by the dozen with
# a few types between them. A schema registered meanwhile counts from the next read.
_UNSCHEMED: ContextVar[set[str] | None] = ContextVar("unschemed_types", default=None)


@contextmanager
def unschemed_types_remembered(known: Iterable[str] = ()) -> Iterator[None]:
    """`known`: types the caller has just found to have no schema (a type with no EventType
    row has none, as `check_event_data` would find one by one; matching.hearing asks)."""
    token = _UNSCHEMED.set(set(known))
    try:
        yield
    finally:
        _UNSCHEMED.reset(token)


def check_event_data(envelope: Envelope) -> SchemaCheck:
    """Validate against the version named by `dataschema`, else the latest. Raises
    SchemaViolation; types without a registered schema are accepted as unvalidated."""
    unschemed = _UNSCHEMED.get()
    if unschemed is not None and envelope.type in unschemed:
        return SchemaCheck("unvalidated")
    event_type = EventType.objects.filter(name=envelope.type).first()
    if event_type is None:
        if unschemed is not None:
            unschemed.add(envelope.type)
        return SchemaCheck("unvalidated")
    schemas = EventSchema.objects.filter(event_type=event_type)
    named = VERSION_IN_URI.search(envelope.dataschema or "")
    if named:
        number = int(named.group("version"))
        named_type = unquote(named.group("type") or "")
        if named_type and named_type != envelope.type:
            raise SchemaViolation(
                envelope.type,
                number,
                [
                    {
                        "path": "/",
                        "message": f"dataschema names a schema of {named_type!r}, "
                        "not of this event's type",
                    }
                ],
            )
        schema = schemas.filter(version=number).first()
        if schema is None:
            raise SchemaViolation(
                envelope.type,
                number,
                [{"path": "/", "message": "dataschema names a version that is not registered"}],
            )
    else:
        schema = schemas.order_by("-version").first()
    if schema is None:
        return SchemaCheck("unvalidated")
    if envelope.data_is_base64:
        raise SchemaViolation(
            envelope.type,
            schema.version,
            [{"path": "/", "message": "binary data cannot match a JSON Schema"}],
        )
    errors = schema_errors(schema.schema, envelope.data)
    if errors:
        raise SchemaViolation(envelope.type, schema.version, errors)
    return SchemaCheck("valid", schema.version)


# --- Registering types and versions ---------------------------------------------------------

# CloudEvents allows any non-empty type; registry names also appear in URL paths
# (/api/v1/schemas/<name>/versions/<n>), so they are kept to URL-safe characters.
EVENT_TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:~+-]{0,254}$")
MAX_DESCRIPTION = 5000


class InvalidEventType(ValueError):
    """`errors` maps a field (name, compatibility, description) to what is wrong with it."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


class IncompatibleSchema(Exception):
    """A new version would break the type's compatibility mode; `incompatibilities` says why."""

    def __init__(
        self,
        event_type: str,
        mode: str,
        against_version: int,
        incompatibilities: list[Incompatibility],
    ):
        self.event_type, self.mode, self.against_version = event_type, mode, against_version
        self.incompatibilities = incompatibilities
        super().__init__(
            f"{event_type}: the new schema is not {mode} compatible with v{against_version}: "
            + "; ".join(f"{i.path or '(root)'}: {i.message}" for i in incompatibilities[:5])
        )


def _checked_fields(
    *, name: str, compatibility: str | None, description: str | None
) -> tuple[str, str | None]:
    errors = {}
    if not isinstance(name, str) or not EVENT_TYPE_NAME.match(name):
        errors["name"] = (
            "1-255 characters: letters, digits and . _ : ~ + -, starting with a "
            "letter or digit (e.g. com.example.order.placed)"
        )
    mode = None
    if compatibility is not None:
        mode = compatibility.upper() if isinstance(compatibility, str) else ""
        if mode not in MODES:
            errors["compatibility"] = f"one of {', '.join(MODES)}"
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        errors["description"] = f"a string of at most {MAX_DESCRIPTION} characters"
    if errors:
        raise InvalidEventType(errors)
    return name, mode


def register_event_type(
    *, name: str, compatibility: str | None = None, description: str | None = None
) -> tuple[EventType, bool]:
    """Create the event type, or update the fields given (None leaves a field as it is).
    A new type is BACKWARD compatible unless told otherwise. Returns (type, created)."""
    name, mode = _checked_fields(name=name, compatibility=compatibility, description=description)
    event_type, created = EventType.objects.get_or_create(
        name=name,
        defaults={"compatibility": mode or "BACKWARD", "description": description or ""},
    )
    if not created:
        changed = {}
        if mode is not None and mode != event_type.compatibility:
            changed["compatibility"] = mode
        if description is not None and description != event_type.description:
            changed["description"] = description
        if changed:
            EventType.objects.filter(pk=event_type.pk).update(**changed)
            for field, value in changed.items():
                setattr(event_type, field, value)
    return event_type, created


def set_compatibility(*, event_type: EventType | str, compatibility: str) -> EventType:
    """Change how new versions of the type are checked. Existing versions stay as they are:
    like the established registries, the new mode applies to the next registration."""
    name = event_type.name if isinstance(event_type, EventType) else event_type
    _name, mode = _checked_fields(name=name, compatibility=compatibility, description=None)
    if not EventType.objects.filter(name=name).update(compatibility=mode):
        raise EventType.DoesNotExist(name)
    return EventType.objects.get(name=name)


def register_schema(
    *, event_type: EventType | str, schema: dict, created_by: str = ""
) -> tuple[EventSchema, bool]:
    """Store `schema` as the type's next version, after checking it against the latest one in
    the type's compatibility mode. Returns (version, created); registering the latest schema
    again returns it unchanged (created=False), so a retried registration is harmless.

    A type named by a string that is not registered yet is created (BACKWARD), as in the
    established registries. Raises InvalidSchema (workflows.events.compatibility),
    InvalidEventType or IncompatibleSchema; nothing is stored then."""
    check_schema(schema)
    name = event_type.name if isinstance(event_type, EventType) else event_type
    with transaction.atomic():
        register_event_type(name=name)  # validates the name; creates the type when new
        # Lock the type row until this version is stored: two registrations at once would
        # otherwise both check against version n and both try to store n + 1, and the
        # loser would get an IntegrityError instead of being checked against the winner's
        # schema. Serialised, the second one sees the first one's version as the latest.
        # (On SQLite this is a no-op; the IMMEDIATE write lock serialises writers there.)
        locked = EventType.objects.select_for_update().get(name=name)
        latest = EventSchema.objects.filter(event_type=locked).order_by("-version").first()
        if latest is not None:
            if _same_json(latest.schema, schema):
                return latest, False
            problems = check_compatibility(latest.schema, schema, locked.compatibility)
            if problems:
                raise IncompatibleSchema(
                    locked.name, locked.compatibility, latest.version, problems
                )
        created = EventSchema.objects.create(
            event_type=locked,
            version=latest.version + 1 if latest else 1,
            schema=schema,
            created_by=(created_by or "")[:150],
        )
    return created, True


def _same_json(a, b) -> bool:
    # JSON equality, not Python's (where 1 == True): sorted keys, compact separators.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
