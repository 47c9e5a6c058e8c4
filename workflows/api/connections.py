"""Broker connections: list and read them with their health (viewer); create, change and
remove them (admin: a connection decides what may inject events). Passwords are never
accepted or shown here: `password_secret` names a secret of the secrets store."""

from __future__ import annotations

from django.db import IntegrityError
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from workflows.access import roles
from workflows.api.auth import token_required
from workflows.api.bodies import BodyTooLarge, media_type, read_limited, storable
from workflows.api.problems import problem
from workflows.events import connections as service
from workflows.events.connectors.base import InvalidConnection
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.events.models import Connection

MAX_BODY_BYTES = 64 * 1024


def _needs_admin(request):
    if roles.rank(request.api_token.role) < roles.rank("admin"):
        return problem(
            403, "Forbidden", "changing connections needs the admin role", kind="forbidden"
        )
    return None


def _read_object(request):
    if media_type(request) != "application/json":
        return None, problem(
            415, "Unsupported media type", "send application/json", kind="unsupported-media-type"
        )
    try:
        body = loads_json(read_limited(request, MAX_BODY_BYTES))
    except BodyTooLarge as exc:
        return None, problem(
            413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large"
        )
    except InvalidEvent as exc:
        return None, problem(400, "Invalid JSON", exc.problems[0]["message"], kind="invalid-json")
    if not isinstance(body, dict):
        return None, problem(400, "Invalid body", "send a JSON object", kind="invalid-body")
    if not storable(body):  # a connection's fields are stored as text and jsonb
        return None, problem(
            400,
            "Invalid body",
            "strings cannot contain NUL characters or unpaired surrogates",
            kind="invalid-body",
        )
    return body, None


def _invalid(exc: Exception):
    return problem(400, "Invalid connection", str(exc), kind="invalid-connection")


def _not_found(name: str):
    return problem(404, "No such connection", f"no connection named {name!r}", kind="not-found")


@require_http_methods(["GET", "POST"])
@token_required("viewer")
def connection_list(request):
    if request.method == "GET":
        rows = Connection.objects.order_by("name")
        return JsonResponse({"connections": [service.describe(c) for c in rows]})
    refused = _needs_admin(request)
    if refused:
        return refused
    body, failed = _read_object(request)
    if failed:
        return failed
    name = body.pop("name", None)
    if not isinstance(name, str):
        return _invalid("name is required (letters, digits, hyphens, underscores)")
    try:
        created = service.add_connection(name=name, **body)
    except (InvalidConnection, IntegrityError) as exc:
        return _invalid(exc)
    return JsonResponse(service.describe(created), status=201)


@require_http_methods(["GET", "PATCH", "DELETE"])
@token_required("viewer")
def connection_detail(request, name: str):
    if request.method == "GET":
        found = Connection.objects.filter(name=name).first()
        return JsonResponse(service.describe(found)) if found else _not_found(name)
    refused = _needs_admin(request)
    if refused:
        return refused
    try:
        if request.method == "DELETE":
            service.remove_connection(name=name)
            return HttpResponse(status=204)
        body, failed = _read_object(request)
        if failed:
            return failed
        if body.pop("name", name) != name:
            raise InvalidConnection("a connection cannot be renamed: create a new one")
        changed = service.update_connection(name=name, **body)
    except Connection.DoesNotExist:
        return _not_found(name)
    except InvalidConnection as exc:
        return _invalid(exc)
    return JsonResponse(service.describe(changed))
