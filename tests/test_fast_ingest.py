"""POST /api/v1/events through the real web server, where acceptable requests take the
fast path (workflows/api/fast_events.py) and every other one Django's view: both must
answer alike, and a revocation must hold at once despite the token cache."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.factories import cloudevent
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token, revoke_api_token
from workflows.events.models import Event, EventSchema, EventType

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/events"
CE = "application/cloudevents+json"


@pytest.fixture
def editor(stack):
    _token, plaintext = create_api_token(name="fast-editor", role="editor")
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {plaintext}"}, timeout=15
    ) as client:
        yield client


def post(client, body, content_type=CE, **headers):
    return client.post(
        URL, content=json.dumps(body), headers={"Content-Type": content_type, **headers}
    )


def test_an_accepted_event_is_stored_answered_and_marked_published(editor):
    response = post(editor, cloudevent(id="fast-1"))

    assert response.status_code == 202
    body = response.json()
    assert body == {
        "id": body["id"],
        "source": "/tests",
        "ce_id": "fast-1",
        "duplicate": False,
        "validation": "unvalidated",
    }
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    stored = Event.objects.get(pk=body["id"])
    assert stored.correlation_id == "fast-1" and stored.channel == "http"
    wait_until(
        lambda: Event.objects.filter(pk=body["id"], published_at__isnull=False).exists(),
        timeout=10,
        message="the event marked published",
    )


def test_a_repeat_is_answered_200_with_the_stored_event(editor):
    first = post(editor, cloudevent(id="fast-dup")).json()

    again = post(editor, cloudevent(id="fast-dup"))

    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["id"] == first["id"]


def test_a_batch_and_a_binary_event_are_accepted(editor):
    batch = editor.post(
        URL,
        content=json.dumps([cloudevent(id=f"fast-b{n}") for n in range(3)]),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    binary = editor.post(
        URL,
        content=b'{"order": 7}',
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "fast-bin",
            "ce-source": "/tests",
            "ce-type": "com.example.order.placed",
        },
    )

    assert batch.status_code == 202
    assert [e["ce_id"] for e in batch.json()["events"]] == ["fast-b0", "fast-b1", "fast-b2"]
    assert binary.status_code == 202
    assert Event.objects.get(ce_id="fast-bin").data == {"order": 7}


def test_a_token_revoked_after_it_was_cached_is_refused_at_once(editor):
    assert post(editor, cloudevent()).status_code == 202  # the server now caches the token

    revoke_api_token(name="fast-editor", actor="test")
    response = post(editor, cloudevent(id="after-revocation"))

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert not Event.objects.filter(ce_id="after-revocation").exists()


def test_refusals_are_the_views_problems(editor, stack):
    event_type = EventType.objects.create(name="com.example.fast.checked")
    EventSchema.objects.create(
        event_type=event_type, version=1, schema={"type": "object", "required": ["order"]}
    )
    violation = post(editor, cloudevent(type_="com.example.fast.checked", data={}))
    reserved = post(editor, cloudevent(source="/signalbox/runs"))
    too_long = post(editor, cloudevent(id="x" * 300))
    viewer = httpx.post(
        f"{stack.base_url}{URL}",
        content=json.dumps(cloudevent()),
        headers={"Content-Type": CE, "Authorization": "Bearer sbx_unknown"},
    )

    assert violation.status_code == 400
    assert violation.json()["type"].endswith("/schema-violation")
    assert violation.json()["errors"][0]["index"] == 0
    assert reserved.status_code == 400 and "reserved" in reserved.json()["detail"]
    assert too_long.status_code == 400
    assert too_long.json()["errors"][0]["attribute"] == "id"
    assert viewer.status_code == 401
    assert not Event.objects.exists()
