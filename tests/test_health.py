"""Liveness and readiness: /healthz says the web process is up, /readyz names what is not."""

from __future__ import annotations

import uuid

import httpx
import pytest

from orchestrator.embedded_redis import free_port
from workflows.infra import heartbeat, redis_client

CHECKS = {"database", "redis", "worker", "bus_consumer"}


@pytest.fixture
def fresh_prefix(settings):
    """A Redis key prefix no process has written to: no heartbeats exist under it."""
    settings.REDIS_PREFIX = f"sbxtest-empty-{uuid.uuid4().hex[:8]}"
    return settings.REDIS_PREFIX


def test_healthz_answers_200(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_200_with_every_check_ok_against_the_real_stack(stack):
    response = httpx.get(f"{stack.base_url}/readyz", timeout=15)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == dict.fromkeys(CHECKS, "ok")


def test_healthz_answers_200_on_the_real_server(stack):
    assert httpx.get(f"{stack.base_url}/healthz", timeout=15).status_code == 200


def test_readyz_answers_503_naming_the_bus_consumer_without_its_heartbeat(client, db, fresh_prefix):
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "not ready"
    assert set(body["checks"]) == CHECKS
    assert "heartbeat" in body["checks"]["bus_consumer"]
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "ok"


def test_readyz_counts_a_fresh_bus_consumer_heartbeat(client, db, fresh_prefix):
    heartbeat.beat("bus-consumer")

    body = client.get("/readyz").json()

    assert body["checks"]["bus_consumer"] == "ok"


def test_readyz_answers_503_naming_redis_when_redis_is_unreachable(client, db, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    redis_client.client.cache_clear()
    try:
        response = client.get("/readyz")
    finally:
        redis_client.client.cache_clear()

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["redis"] != "ok"
    assert checks["worker"] != "ok" and checks["bus_consumer"] != "ok"
