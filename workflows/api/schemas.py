"""/api/v1/schemas: the schema registry. Event types with numbered JSON Schema versions.

GET  /schemas                               types with their latest version
GET  /schemas/<type>                        one type
PUT  /schemas/<type>                        create or update a type (compatibility, description)
GET  /schemas/<type>/versions               its versions
POST /schemas/<type>/versions               register a version (checked for compatibility)
GET  /schemas/<type>/versions/<n>|latest    one version, as application/schema+json

Type names contain dots (com.example.order.placed): the routes use the `str` converter,
which accepts anything but a slash.
"""

from __future__ import annotations

import json

from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from workflows.access import roles
from workflows.api.auth import token_required
from workflows.api.bodies import UNSTORABLE_TEXT, BodyTooLarge, media_type, read_limited, storable
from workflows.api.problems import problem
from workflows.events.compatibility import InvalidSchema
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.events.models import EventSchema, EventType
from workflows.events.schemas import (
    IncompatibleSchema,
    InvalidEventType,
    register_event_type,
    register_schema,
)
from workflows.queries import schemas as schema_selectors

MAX_SCHEMA_BYTES = 256 * 1024
SCHEMA_JSON = "application/schema+json"
JSON = "application/json"
# The 409 body lists this many reasons at most (the count says how many there were).
MAX_LISTED = 50


def dataschema_uri(request, name: str, number: int) -> str:
    """The absolute URI producers put in `dataschema` to be validated against this version."""
    return request.build_absolute_uri(reverse("api-schema-version", args=[name, number]))


def _type_json(request, event_type: EventType) -> dict:
    latest = getattr(event_type, "latest_version", None)
    return {
        "name": event_type.name,
        "description": event_type.description,
        "compatibility": event_type.compatibility,
        "latest_version": latest,
        "versions": getattr(event_type, "version_count", 0),
        "dataschema": dataschema_uri(request, event_type.name, latest) if latest else None,
        "created_at": event_type.created_at.isoformat(),
    }


def _version_json(request, version: EventSchema, name: str) -> dict:
    return {
        "type": name,
        "version": version.version,
        "dataschema": dataschema_uri(request, name, version.version),
        "created_by": version.created_by,
        "created_at": version.created_at.isoformat(),
    }


def _field_errors(exc: InvalidEventType) -> list[dict]:
    """A list like every other problem's `errors` (docs/api.md), one entry per field."""
    return [{"field": name, "message": text} for name, text in exc.errors.items()]


def _no_type(name: str):
    return problem(404, "No such event type", name, kind="not-found")


def _needs_editor(request):
    if roles.rank(request.api_token.role) < roles.rank("editor"):
        return problem(
            403, "Forbidden", "changing the schema registry needs the editor role", kind="forbidden"
        )
    return None


def _read_json(request):
    """The body as JSON, or a problem response."""
    if media_type(request) not in (JSON, SCHEMA_JSON):
        return None, problem(
            415,
            "Unsupported media type",
            f"send {JSON} or {SCHEMA_JSON}",
            kind="unsupported-media-type",
        )
    try:
        body = loads_json(read_limited(request, MAX_SCHEMA_BYTES))
    except BodyTooLarge as exc:
        return None, problem(
            413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large"
        )
    except InvalidEvent as exc:  # not UTF-8, too deep, or not JSON at all
        return None, problem(400, "Invalid JSON", exc.problems[0]["message"], kind="invalid-json")
    if not storable(body):  # schemas are stored as jsonb, descriptions as text
        return None, problem(400, "Invalid body", UNSTORABLE_TEXT, kind="invalid-body")
    return body, None


@require_http_methods(["GET"])
@token_required("viewer")
def schema_list(request):
    return JsonResponse(
        {"event_types": [_type_json(request, t) for t in schema_selectors.event_types()]}
    )


@require_http_methods(["GET", "PUT"])
@token_required("viewer")
def event_type(request, name: str):
    if request.method == "GET":
        found = schema_selectors.event_type(name)
        return JsonResponse(_type_json(request, found)) if found else _no_type(name)
    refused = _needs_editor(request)
    if refused:
        return refused
    body, failed = _read_json(request)
    if failed:
        return failed
    unknown = (
        sorted(set(body) - {"compatibility", "description"}) if isinstance(body, dict) else None
    )
    if unknown is None or unknown:
        return problem(
            400,
            "Invalid body",
            'send {"compatibility": "BACKWARD|FORWARD|FULL|NONE", "description": "..."}'
            + (f"; unknown fields: {', '.join(unknown)}" if unknown else ""),
            kind="invalid-body",
        )
    try:
        _saved, created = register_event_type(
            name=name, compatibility=body.get("compatibility"), description=body.get("description")
        )
    except InvalidEventType as exc:
        return problem(
            400,
            "Invalid event type",
            str(exc),
            kind="invalid-event-type",
            errors=_field_errors(exc),
        )
    return JsonResponse(
        _type_json(request, schema_selectors.event_type(name)), status=201 if created else 200
    )


@require_http_methods(["GET", "POST"])
@token_required("viewer")
def versions(request, name: str):
    if request.method == "GET":
        found = schema_selectors.event_type(name)
        if found is None:
            return _no_type(name)
        return JsonResponse(
            {
                "type": name,
                "compatibility": found.compatibility,
                "versions": [
                    _version_json(request, v, name) for v in schema_selectors.versions(found)
                ],
            }
        )
    refused = _needs_editor(request)
    if refused:
        return refused
    body, failed = _read_json(request)
    if failed:
        return failed
    if media_type(request) == SCHEMA_JSON:
        schema = body
    elif isinstance(body, dict) and "schema" in body:
        schema = body["schema"]
    else:
        return problem(
            400,
            "Invalid body",
            f'send {{"schema": {{...}}}} as {JSON}, or the schema itself as {SCHEMA_JSON}',
            kind="invalid-body",
        )
    try:
        saved, created = register_schema(
            event_type=name, schema=schema, created_by=f"token:{request.api_token.name}"
        )
    except InvalidEventType as exc:
        return problem(
            400,
            "Invalid event type",
            str(exc),
            kind="invalid-event-type",
            errors=_field_errors(exc),
        )
    except InvalidSchema as exc:
        return problem(
            400,
            "Invalid JSON Schema",
            f"{len(exc.errors)} problem(s); the schema must be valid draft 2020-12",
            kind="invalid-schema",
            errors=exc.errors,
        )
    except IncompatibleSchema as exc:
        found = [i.as_dict() for i in exc.incompatibilities]
        return problem(
            409,
            "Incompatible schema",
            f"not {exc.mode} compatible with v{exc.against_version} of {exc.event_type}: "
            + "; ".join(f"{i['path'] or '(root)'}: {i['message']}" for i in found[:3])
            + (f" (and {len(found) - 3} more)" if len(found) > 3 else ""),
            kind="incompatible-schema",
            compatibility=exc.mode,
            against_version=exc.against_version,
            incompatibilities=found[:MAX_LISTED],
            incompatibility_count=len(found),
        )
    answer = {
        **_version_json(request, saved, name),
        "created": created,
        "compatibility": saved.event_type.compatibility,
    }
    response = JsonResponse(answer, status=201 if created else 200)
    response["Location"] = answer["dataschema"]
    return response


@require_http_methods(["GET"])
@token_required("viewer")
def version(request, name: str, number: int | None = None):
    found = EventType.objects.filter(name=name).first()
    if found is None:
        return _no_type(name)
    stored = schema_selectors.version(found, number)
    if stored is None:
        return problem(
            404,
            "No such schema version",
            f"{name} has no version {number if number is not None else 'yet'}",
            kind="not-found",
        )
    response = HttpResponse(json.dumps(stored.schema, indent=2), content_type=SCHEMA_JSON)
    response["Content-Location"] = dataschema_uri(request, name, stored.version)
    response["Schema-Version"] = str(stored.version)
    return response
