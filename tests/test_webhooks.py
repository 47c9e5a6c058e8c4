"""Webhook triggers: /hooks/<slug> turns authentic JSON or form bodies into CloudEvents.

Standard Webhooks, as the reference implementation (`standardwebhooks`) signs them; what
wrong input gets; and a signed call starting a run end to end. GitHub, header and
unauthenticated modes are in test_webhook_modes.py, creating webhooks (service, API,
command line) in test_webhook_management.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest
from standardwebhooks import Webhook as StandardSigner

from tests.factories import definition, log_step
from tests.waiting import wait_until
from tests.webhook_requests import (
    FORM,
    JSON,
    TYPE,
    assert_problem,
    github_signature,
    post,
    standard_headers,
)
from workflows.events.models import Event, EventSchema, EventType, Webhook
from workflows.events.webhook_auth import standard_key
from workflows.events.webhooks import create_webhook


@pytest.fixture
def standard_hook(db):
    _hook, secret = create_webhook(slug="orders", event_type=TYPE)
    return secret


# --- Standard Webhooks ------------------------------------------------------------------


def test_a_signed_standard_webhook_becomes_an_event_of_the_webhooks_type(client, standard_hook):
    body = json.dumps({"order": 7, "items": ["a", "b"]}).encode()
    headers = standard_headers(standard_hook, body, msg_id="msg_first")

    response = post(client, "orders", body, headers)

    assert response.status_code == 202, response.content
    assert response.json()["duplicate"] is False
    event = Event.objects.get(pk=response.json()["id"])
    assert (event.type, event.source, event.ce_id) == (TYPE, "/hooks/orders", "msg_first")
    assert event.data == {"order": 7, "items": ["a", "b"]}
    assert event.channel == "webhook"
    assert event.datacontenttype == JSON


def test_any_json_value_is_accepted_as_the_event_data(client, standard_hook):
    body = b'[1, "two", null]'

    response = post(client, "orders", body, standard_headers(standard_hook, body))

    assert response.status_code == 202
    assert Event.objects.get(pk=response.json()["id"]).data == [1, "two", None]


def test_a_replayed_webhook_id_is_a_duplicate_and_stores_no_second_event(client, standard_hook):
    body = b'{"order": 1}'
    headers = standard_headers(standard_hook, body, msg_id="msg_once")

    first = post(client, "orders", body, headers)
    replay = post(client, "orders", body, headers)

    assert first.status_code == 202 and replay.status_code == 200
    assert replay.json() == {**first.json(), "duplicate": True}
    assert Event.objects.filter(source="/hooks/orders").count() == 1


def test_a_signature_made_with_another_secret_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    other = "whsec_" + "A" * 44
    response = post(client, "orders", body, standard_headers(other, body))

    problem = assert_problem(response, 401)
    assert "signature" in problem["detail"]
    assert not Event.objects.exists()


def test_a_body_changed_after_signing_is_refused(client, standard_hook):
    headers = standard_headers(standard_hook, b'{"amount": 1}')

    assert_problem(post(client, "orders", b'{"amount": 1000}', headers), 401)


def test_a_webhook_id_changed_after_signing_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    headers = {**standard_headers(standard_hook, body), "webhook-id": "msg_other"}

    assert_problem(post(client, "orders", body, headers), 401)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_request_missing_a_signature_header_is_refused(client, standard_hook, missing):
    body = b'{"order": 1}'
    headers = standard_headers(standard_hook, body)
    del headers[missing]

    problem = assert_problem(post(client, "orders", body, headers), 401)
    assert missing in problem["detail"]


def test_an_unsigned_request_is_refused(client, standard_hook):
    assert_problem(post(client, "orders", b"{}", {}), 401)


def test_a_timestamp_more_than_five_minutes_old_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    stale = datetime.now(tz=UTC) - timedelta(minutes=5, seconds=30)

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body, at=stale)), 401
    )
    assert "old" in problem["detail"]


def test_a_timestamp_more_than_five_minutes_ahead_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    future = datetime.now(tz=UTC) + timedelta(minutes=5, seconds=30)

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body, at=future)), 401
    )
    assert "future" in problem["detail"]


@pytest.mark.parametrize("offset", [-4, 4])
def test_a_clock_skew_within_five_minutes_either_way_is_tolerated(client, standard_hook, offset):
    body = b'{"order": 1}'
    at = datetime.now(tz=UTC) + timedelta(minutes=offset)

    assert (
        post(client, "orders", body, standard_headers(standard_hook, body, at=at)).status_code
        == 202
    )


def test_any_one_of_several_signatures_may_match_as_during_key_rotation(client, standard_hook):
    body = b'{"order": 1}'
    headers = standard_headers(standard_hook, body)
    old_key = StandardSigner("whsec_" + "B" * 44).sign(
        msg_id=headers["webhook-id"], timestamp=datetime.now(tz=UTC), data=body.decode()
    )
    headers["webhook-signature"] = f"v1a,c2lnbmF0dXJl {old_key} {headers['webhook-signature']}"

    assert post(client, "orders", body, headers).status_code == 202


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-signature", "garbage"),
        ("webhook-signature", "v1,!!!not-base64!!!"),
        ("webhook-signature", "v1,a,b"),
        ("webhook-signature", "v1"),
        ("webhook-timestamp", "yesterday"),
        ("webhook-timestamp", "1e9"),
        ("webhook-timestamp", "nan"),
        ("webhook-timestamp", "-1"),
    ],
)
def test_malformed_signature_headers_are_refused_with_401_not_a_crash(
    client, standard_hook, header, value
):
    body = b'{"order": 1}'
    headers = {**standard_headers(standard_hook, body), header: value}

    assert_problem(post(client, "orders", body, headers), 401)


def test_the_signature_is_checked_over_the_exact_bytes_received(client, standard_hook):
    body = '{"name": "Zoë ✓"}'.encode()

    response = post(client, "orders", body, standard_headers(standard_hook, body))

    assert response.status_code == 202
    assert Event.objects.get(pk=response.json()["id"]).data == {"name": "Zoë ✓"}


def test_a_form_body_becomes_a_dict_with_repeated_fields_as_lists(client, standard_hook):
    body = urlencode([("name", "Ada"), ("tag", "a"), ("tag", "b"), ("empty", "")]).encode()

    response = post(client, "orders", body, standard_headers(standard_hook, body), FORM)

    assert response.status_code == 202, response.content
    event = Event.objects.get(pk=response.json()["id"])
    assert event.data == {"name": "Ada", "tag": ["a", "b"], "empty": ""}


def test_a_traceparent_header_is_kept_on_the_event(client, standard_hook):
    body = b"{}"
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {**standard_headers(standard_hook, body), "traceparent": traceparent}

    response = post(client, "orders", body, headers)

    assert Event.objects.get(pk=response.json()["id"]).extensions["traceparent"] == traceparent


# --- Wrong input ------------------------------------------------------------------------


def test_invalid_json_is_refused_with_400(client, standard_hook):
    body = b'{"order": '

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body)), 400
    )
    assert "invalid JSON" in problem["detail"]


def test_a_body_that_is_not_utf8_is_refused_with_400(client, standard_hook):
    body = b'{"name": "\xff"}'
    headers = standard_headers(standard_hook, b"{}")
    # Sign the real bytes by hand: the reference signer only takes text.
    key = standard_key(standard_hook)
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    headers["webhook-signature"] = (
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    )

    problem = assert_problem(post(client, "orders", body, headers), 400)
    assert "UTF-8" in problem["detail"]


def test_a_body_that_is_neither_json_nor_a_form_is_refused_with_415(client, standard_hook):
    body = b"<order/>"

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body), "application/xml"),
        415,
    )
    assert "application/json" in problem["detail"]


def test_an_unauthenticated_request_learns_nothing_about_its_body(client, standard_hook):
    assert_problem(post(client, "orders", b"<order/>", {}, "application/xml"), 401)


def test_a_body_over_the_limit_is_refused_with_413(client, standard_hook, settings):
    settings.SIGNALBOX = {**settings.SIGNALBOX, "MAX_EVENT_BYTES": 1024}
    body = json.dumps({"blob": "x" * 2000}).encode()

    assert_problem(post(client, "orders", body, standard_headers(standard_hook, body)), 413)
    assert not Event.objects.exists()


def test_an_unknown_slug_answers_a_404_problem(client, db):
    problem = assert_problem(post(client, "nobody", b"{}", {}), 404)
    assert "/hooks/nobody" in problem["detail"]


def test_a_disabled_webhook_answers_404(client, standard_hook):
    Webhook.objects.filter(slug="orders").update(enabled=False)
    body = b"{}"

    assert_problem(post(client, "orders", body, standard_headers(standard_hook, body)), 404)


@pytest.mark.parametrize("stored", ["", "not-a-fernet-token"])
def test_a_webhook_whose_secret_is_empty_or_unreadable_fails_closed(client, db, stored):
    Webhook.objects.create(
        slug="broken", event_type=TYPE, auth_mode="github", secret_encrypted=stored
    )
    body = b"{}"
    headers = {"X-Hub-Signature-256": github_signature("", body)}

    assert_problem(post(client, "broken", body, headers), 500)
    assert not Event.objects.exists()


def test_a_get_on_a_webhook_url_answers_a_405_problem(client, standard_hook):
    response = client.get("/hooks/orders")

    assert_problem(response, 405)
    assert response["Allow"] == "POST, OPTIONS"


def test_data_that_breaks_the_types_schema_is_refused_with_400(client, standard_hook):
    event_type = EventType.objects.create(name=TYPE)
    EventSchema.objects.create(
        event_type=event_type, version=1, schema={"type": "object", "required": ["order"]}
    )
    body = b'{"something": "else"}'

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body)), 400
    )
    assert problem["type"].endswith("schema-violation")


# --- End to end -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_signed_webhook_call_starts_one_run_of_the_workflow_triggered_by_its_type(api, stack):
    created = api.post("/api/v1/webhooks", json={"slug": "deploys", "event_type": TYPE})
    assert created.status_code == 201, created.text
    assert api.put(
        "/api/v1/workflows/on-deploy", json=definition(log_step("note"), event=TYPE)
    ).status_code in (200, 201)
    assert api.post("/api/v1/workflows/on-deploy/publish").status_code == 201

    body = json.dumps({"service": "web", "version": "1.2.3"}).encode()
    headers = {
        **standard_headers(created.json()["secret"], body, msg_id="msg_deploy_1"),
        "Content-Type": JSON,
    }
    # The sender knows nothing of our API token.
    first = httpx.post(created.json()["url"], content=body, headers=headers, timeout=15)
    assert first.status_code == 202, first.text
    event_id = first.json()["id"]

    def finished():
        runs = api.get("/api/v1/runs", params={"workflow": "on-deploy"}).json()["runs"]
        return [r for r in runs if r["event"] == event_id and r["status"] == "succeeded"]

    wait_until(finished, message="the webhook's run to succeed")

    replay = httpx.post(created.json()["url"], content=body, headers=headers, timeout=15)
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    forged = httpx.post(
        created.json()["url"], content=b'{"service": "db"}', headers=headers, timeout=15
    )
    assert forged.status_code == 401
    assert forged.headers["Content-Type"] == "application/problem+json"
    runs = api.get("/api/v1/runs", params={"workflow": "on-deploy"}).json()["runs"]
    assert len(runs) == 1
    assert Event.objects.filter(source="/hooks/deploys").count() == 1
