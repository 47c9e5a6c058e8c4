"""`GET /metrics`: the Prometheus exposition of workflows.operations.prometheus, for any
API token of no team (Prometheus sends it with `authorization: {credentials: <token>}` in its scrape
config).

A team's token is refused: the figures describe the whole installation (runs by workflow,
dead letters, queues, steps), so there is no subset of them that is only its team's."""

from __future__ import annotations

import redis
from django.db import DatabaseError
from django.http import HttpResponse
from django.views.decorators.http import require_http_methods
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from workflows.api.auth import token_required
from workflows.api.problems import problem
from workflows.operations.prometheus import SignalboxCollector

registry = CollectorRegistry(auto_describe=False)
registry.register(SignalboxCollector())


@require_http_methods(["GET"])
@token_required("viewer")
def metrics(request):
    if request.api_token.team_id is not None:
        return problem(
            403,
            "Forbidden",
            "metrics cover every team's workflows: scrape with a token of no team",
            kind="forbidden",
        )
    try:
        body = generate_latest(registry)
    except (DatabaseError, redis.RedisError) as exc:
        # A scrape that cannot see the truth says so, rather than report zeros.
        return problem(503, "Metrics unavailable", str(exc), kind="unavailable")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
