"""Circuit breakers of outbound hosts: see which hosts are failing fast, and close one."""

from __future__ import annotations

import redis
from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from workflows.api.auth import token_required
from workflows.api.problems import problem
from workflows.infra import circuit


def _unavailable(exc: redis.RedisError):
    return problem(503, "Circuit state unavailable", f"Redis: {exc}", kind="unavailable")


@require_http_methods(["GET"])
@token_required("viewer")
def circuit_list(request):
    try:
        found = circuit.circuits()
    except redis.RedisError as exc:
        return _unavailable(exc)
    return JsonResponse(
        {
            "failure_threshold": circuit.failure_threshold(),
            "cooldown_seconds": circuit.cooldown_seconds(),
            "circuits": [c.as_dict() for c in found],
        }
    )


@require_http_methods(["POST"])
@token_required("operator")
def circuit_reset(request, host: str):
    try:
        reset = circuit.reset(host)
    except redis.RedisError as exc:
        return _unavailable(exc)
    if not reset:
        return problem(404, "No such circuit", f"no circuit for {host!r}", kind="not-found")
    return JsonResponse({"reset": reset})
