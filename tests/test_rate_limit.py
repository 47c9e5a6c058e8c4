"""Per-token ingest rate limits (workflows/events/rate_limit.py): over the rate a request is
answered 429 problem+json with Retry-After and nothing of it is stored; what is accepted is
stored, and the refused request is accepted once the bucket has refilled. Both call sites:
Django's view in this process, and the ASGI fast path of a real server started with a low
rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import httpx
import pytest
from django.conf import settings
from django.test import override_settings

from orchestrator import servers
from orchestrator.embedded_redis import free_port
from tests.factories import cloudevent
from tests.stack import LOGS, ROOT
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token
from workflows.events import rate_limit
from workflows.events.models import Event

URL = "/api/v1/events"
CE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
# Five at once, then one every 20 s: no refill can happen while a test sends its requests.
RATE, BURST = 0.05, 5


def limits(rate=RATE, burst=BURST):
    return override_settings(
        SIGNALBOX={
            **settings.SIGNALBOX,
            "INGEST_RATE_PER_TOKEN": rate,
            "INGEST_BURST_PER_TOKEN": burst,
        }
    )


def assert_rate_limited(status: int, content_type: str, retry_after: str, body: dict) -> None:
    assert status == 429
    assert content_type.startswith("application/problem+json")
    assert int(retry_after) >= 1
    assert body["status"] == 429 and body["type"].endswith("/rate-limited")
    assert body["retry_after"] == int(retry_after)


@pytest.fixture
def view_post(client, db):
    _row, plaintext = create_api_token(name=f"limited-{uuid.uuid4().hex[:6]}", role="editor")

    def send(body, content_type=CE):
        return client.post(
            URL,
            data=json.dumps(body),
            content_type=content_type,
            headers={"Authorization": f"Bearer {plaintext}"},
        )

    return send


def test_the_view_refuses_a_token_over_its_burst_and_stores_nothing_of_the_refused(view_post):
    with limits():
        accepted = [view_post(cloudevent()) for _ in range(BURST)]
        refused_event = cloudevent()
        refused = view_post(refused_event)

    assert [r.status_code for r in accepted] == [202] * BURST
    assert Event.objects.filter(pk__in=[r.json()["id"] for r in accepted]).count() == BURST
    assert_rate_limited(
        refused.status_code, refused["Content-Type"], refused["Retry-After"], refused.json()
    )
    assert not Event.objects.filter(ce_id=refused_event["id"]).exists()


def test_a_batch_costs_one_per_event_and_is_refused_whole(view_post):
    with limits():
        assert view_post(cloudevent()).status_code == 202
        batch = [cloudevent() for _ in range(BURST)]  # 5 more than the 4 left
        refused = view_post(batch, BATCH)
        fits = view_post(batch[:4], BATCH)

    assert refused.status_code == 429
    assert fits.status_code == 202
    assert Event.objects.filter(ce_id__in=[e["id"] for e in batch]).count() == 4


def test_each_token_has_its_own_bucket(view_post, client):
    _row, other = create_api_token(name="other-producer", role="editor")
    with limits():
        for _ in range(BURST):
            assert view_post(cloudevent()).status_code == 202
        assert view_post(cloudevent()).status_code == 429
        response = client.post(
            URL,
            data=json.dumps(cloudevent()),
            content_type=CE,
            headers={"Authorization": f"Bearer {other}"},
        )

    assert response.status_code == 202


def test_a_refused_request_is_accepted_once_the_bucket_refills(view_post):
    event = cloudevent()
    # Refills in 2 s: the second request comes sooner even on a loaded machine (at 50 ms
    # it did not always, and was accepted).
    with limits(rate=0.5, burst=1):
        assert view_post(cloudevent()).status_code == 202
        assert view_post(event).status_code == 429

        wait_until(
            lambda: view_post(event).status_code == 202,
            timeout=10,
            message="the refused event accepted after the refill",
        )

    assert Event.objects.filter(ce_id=event["id"]).count() == 1


def test_a_zero_rate_turns_the_limit_off(view_post):
    with limits(rate=0, burst=1):
        assert [view_post(cloudevent()).status_code for _ in range(3)] == [202] * 3


def test_when_redis_fails_ingest_goes_on_unlimited(view_post, monkeypatch):
    import redis

    def down(*args, **kwargs):
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(rate_limit, "_sync", None)
    monkeypatch.setattr(rate_limit, "_sync_script", lambda: down)
    monkeypatch.setattr(rate_limit, "_unchecked_until", 0.0)
    with limits(rate=0.05, burst=1):
        codes = [view_post(cloudevent()).status_code for _ in range(3)]

    assert codes == [202] * 3


# --- the ASGI fast path ---------------------------------------------------------------------


@pytest.fixture
def limited_server(stack):
    """A second web server of the running stack (same database and Redis prefix), started
    with a low rate: the fast path reads its limits from the environment."""
    env = servers.web_env(
        dict(
            stack.env,
            SIGNALBOX_INGEST_RATE_PER_TOKEN=str(RATE),
            SIGNALBOX_INGEST_BURST_PER_TOKEN=str(BURST),
        )
    )
    port = free_port()
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{env['SIGNALBOX_REDIS_PREFIX']}-web-limited.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        servers.web_command(sys.executable, host="127.0.0.1", port=port, workers=1),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def ready():
        assert process.poll() is None, "the limited web server exited"
        try:
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout=60, interval=0.25, message="the limited web server")
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.django_db(transaction=True)
def test_the_fast_path_answers_429_with_retry_after_and_stores_only_what_it_accepted(
    limited_server,
):
    _row, plaintext = create_api_token(name="fast-limited", role="editor")
    events = [cloudevent() for _ in range(BURST + 3)]
    with httpx.Client(
        base_url=limited_server, headers={"Authorization": f"Bearer {plaintext}"}, timeout=15
    ) as api:
        responses = [
            api.post(URL, content=json.dumps(e), headers={"Content-Type": CE}) for e in events
        ]
        binary = api.post(
            URL,
            content=b"{}",
            headers={
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": str(uuid.uuid4()),
                "ce-source": "/limited",
                "ce-type": "t",
            },
        )

    codes = [r.status_code for r in responses]
    assert codes == [202] * BURST + [429] * 3
    for response in responses[BURST:]:
        assert_rate_limited(
            response.status_code,
            response.headers["content-type"],
            response.headers["retry-after"],
            response.json(),
        )
    assert binary.status_code == 429
    stored = set(Event.objects.filter(source="/tests").values_list("ce_id", flat=True))
    assert {e["id"] for e in events[:BURST]} <= stored
    assert not stored & {e["id"] for e in events[BURST:]}


def test_a_busy_token_asks_redis_once_per_lease_not_once_per_request(db, monkeypatch):
    calls = []
    script = rate_limit._sync_script()

    def counted(**kwargs):
        calls.append(kwargs["args"])
        return script(**kwargs)

    monkeypatch.setattr(rate_limit, "_sync_script", lambda: counted)
    token_id = 10**9 + uuid.uuid4().int % 10**6
    with limits(rate=200, burst=100):  # a lease of 200 x 50 ms = 10 events beyond the cost
        verdicts = [rate_limit.check(token_id=token_id, cost=1) for _ in range(22)]

    assert all(v.allowed for v in verdicts)
    assert len(calls) == 2  # 11 events granted per round trip


def test_the_fast_path_check_also_lets_requests_through_when_redis_fails(monkeypatch):
    import asyncio

    import redis

    async def down(**kwargs):
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(rate_limit, "_async_script", lambda: down)
    monkeypatch.setattr(rate_limit, "_unchecked_until", 0.0)
    with limits(rate=0.05, burst=1):
        verdicts = [asyncio.run(rate_limit.acheck(token_id=1, cost=1)) for _ in range(3)]

    assert all(v.allowed for v in verdicts)
    assert rate_limit._unchecked_until > 0  # and Redis is left alone for a while


@pytest.mark.django_db(transaction=True)
def test_a_request_the_fast_path_hands_to_the_view_is_counted_once(limited_server):
    from workflows.events.models import EventSchema, EventType

    kind = EventType.objects.create(name=f"com.example.limited.{uuid.uuid4().hex[:6]}")
    EventSchema.objects.create(
        event_type=kind, version=1, schema={"type": "object", "required": ["order"]}
    )
    _row, plaintext = create_api_token(name="handed-over", role="editor")
    with httpx.Client(
        base_url=limited_server, headers={"Authorization": f"Bearer {plaintext}"}, timeout=15
    ) as api:

        def send(event):
            return api.post(URL, content=json.dumps(event), headers={"Content-Type": CE})

        # Valid CloudEvents whose data breaks the schema: the fast path counts them, then
        # hands them to the view, which answers the schema violation without counting again.
        violations = [send(cloudevent(type_=kind.name, data={})) for _ in range(2)]
        valid = [send(cloudevent()) for _ in range(BURST - 2)]

    assert [r.status_code for r in violations] == [400, 400]
    assert [r.status_code for r in valid] == [202] * (BURST - 2)
