"""Named secrets for admins: list, create, rotate (a new value) and delete. A value is
written, never read back: answers carry the name, a hint of its first characters and when
it last changed. Secrets serve every team's workflows, so a team-scoped token cannot
manage them.

GET    /secrets             {"secrets": [{"name", "hint", "created_at", "updated_at"}]}
POST   /secrets             {"name": "...", "value": "..."}  → 201, 409 when it exists
GET    /secrets/<name>
PUT    /secrets/<name>      {"value": "..."}  → the rotated secret (PATCH alike)
DELETE /secrets/<name>      → 204
"""

from __future__ import annotations

import functools
import json

from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from workflows.access import secrets as secret_service
from workflows.access.models import Secret
from workflows.api.auth import token_required
from workflows.api.bodies import BodyTooLarge, read_limited
from workflows.api.problems import problem

MAX_BODY_BYTES = secret_service.MAX_VALUE_CHARS * 4 + 1024  # a value may be multi-byte


class _Refused(Exception):
    def __init__(self, response):
        self.response = response


def _admin_without_team(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.api_token.team_id is not None:
            return problem(
                403,
                "Forbidden",
                "secrets serve every team: they need an admin token without a team",
                kind="forbidden",
            )
        return view(request, *args, **kwargs)

    return wrapper


def _actor(request) -> str:
    return f"token:{request.api_token.name}"


def _body(request) -> dict:
    try:
        raw = read_limited(request, MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        raise _Refused(
            problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
        ) from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise _Refused(
            problem(
                400,
                "Invalid body",
                'send a JSON object, e.g. {"name": "stripe_key", "value": "…"}',
                kind="invalid-body",
            )
        )
    return body


def _refused(exc: secret_service.SecretError):
    titles = {404: "No such secret", 409: "Secret exists"}
    kinds = {404: "not-found", 409: "conflict"}
    return problem(
        exc.status,
        titles.get(exc.status, "Invalid secret"),
        exc.message,
        kind=kinds.get(exc.status, "invalid-secret"),
    )


@require_http_methods(["GET", "POST"])
@token_required("admin")
@_admin_without_team
def secret_list(request):
    if request.method == "GET":
        return JsonResponse({"secrets": secret_service.list_secrets()})
    try:
        body = _body(request)
        secret = secret_service.create_secret(
            name=body.get("name"), value=body.get("value"), actor=_actor(request)
        )
    except _Refused as exc:
        return exc.response
    except secret_service.SecretError as exc:
        return _refused(exc)
    return JsonResponse(secret_service.describe(secret), status=201)


@require_http_methods(["GET", "PUT", "PATCH", "DELETE"])
@token_required("admin")
@_admin_without_team
def secret_detail(request, name: str):
    try:
        if request.method == "GET":
            secret = Secret.objects.filter(name=name).first()
            if secret is None:
                raise secret_service.SecretError(f"no secret named {name!r}", status=404)
            return JsonResponse(secret_service.describe(secret))
        if request.method == "DELETE":
            secret_service.delete_secret(name=name, actor=_actor(request))
            return HttpResponse(status=204)
        body = _body(request)
        if set(body) - {"value", "name"} or body.get("name", name) != name:
            raise secret_service.SecretError('send {"value": "…"}: a secret cannot be renamed')
        secret = secret_service.rotate_secret(
            name=name, value=body.get("value"), actor=_actor(request)
        )
    except _Refused as exc:
        return exc.response
    except secret_service.SecretError as exc:
        return _refused(exc)
    return JsonResponse(secret_service.describe(secret))
