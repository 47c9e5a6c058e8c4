"""Liveness and readiness."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from workflows.infra.heartbeat import last_beat
from workflows.infra.redis_client import client


def healthz(request):
    return JsonResponse({"status": "ok"})


def _database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        return f"{type(exc).__name__}: {exc}"
    return None


def _redis() -> str | None:
    try:
        client().ping()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def _worker() -> str | None:
    from orchestrator.celery import app

    try:
        replies = app.control.ping(timeout=1.0)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None if replies else "no Celery worker answered a ping within 1 s"


def _heartbeat(component: str) -> str | None:
    try:
        beat = last_beat(component)
    except Exception as exc:  # noqa: BLE001
        return f"cannot read heartbeat: {exc}"
    if beat is None:
        return (
            f"no heartbeat from the {component} in the last "
            f"{settings.SIGNALBOX['HEARTBEAT_TTL_SECONDS']} s"
        )
    return None


def readyz(request):
    checks = {"database": _database(), "redis": _redis()}
    if checks["redis"] is None:
        checks["worker"] = _worker()
        checks["bus_consumer"] = _heartbeat("bus-consumer")
    else:
        checks["worker"] = checks["bus_consumer"] = "redis is unreachable"
    failing = {name: why for name, why in checks.items() if why}
    body = {
        "status": "ready" if not failing else "not ready",
        "checks": {name: (why or "ok") for name, why in checks.items()},
        "time": time.time(),
    }
    return JsonResponse(body, status=503 if failing else 200)
