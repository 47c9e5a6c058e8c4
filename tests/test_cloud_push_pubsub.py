"""Google Cloud Pub/Sub push on /hooks/<slug>: messages with their decoded data, ordering
keys as partition keys, and OIDC tokens signed with a key whose key set a loopback server
serves as Google's would be.

The clouds themselves are played by the test (tests/cloud_pushes.py): nothing here talks
to AWS, Azure or Google.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from django.test import Client

from tests.cloud_pushes import TYPE, new_key, post
from tests.http_recorder import Reply
from workflows.events.models import Event
from workflows.events.webhooks import create_webhook

pytestmark = pytest.mark.django_db


PUSH = {
    # The push request body from "Push subscriptions" in the Pub/Sub documentation.
    "message": {
        "attributes": {"key": "value"},
        "data": "SGVsbG8gQ2xvdWQgUHViL1N1YiEgSGVyZSBpcyBteSBtZXNzYWdlIQ==",
        "messageId": "2070443601311540",
        "message_id": "2070443601311540",
        "publishTime": "2021-02-26T19:13:55.749Z",
        "publish_time": "2021-02-26T19:13:55.749Z",
    },
    "subscription": "projects/myproject/subscriptions/mysubscription",
}
AUDIENCE = "https://signalbox.example/hooks/pubsub"
ACCOUNT = "push-sender@myproject.iam.gserviceaccount.com"


def test_pubsub_push_becomes_an_event_with_its_decoded_data(db):
    create_webhook(slug="pubsub", event_type=TYPE, auth_mode="none", push_format="pubsub")
    response = post(Client(), "pubsub", PUSH)
    assert response.status_code == 202, response.content
    event = Event.objects.get()
    assert event.ce_id == "2070443601311540"
    assert event.source == "//pubsub.googleapis.com/projects/myproject/subscriptions/mysubscription"
    assert event.data == "Hello Cloud Pub/Sub! Here is my message!"
    assert event.datacontenttype == "text/plain"
    assert json.loads(event.extensions["pubsubattributes"]) == {"key": "value"}


def test_pubsub_ordering_key_is_the_partition_key_and_json_data_is_json(db):
    create_webhook(slug="pubsub", event_type=TYPE, auth_mode="none", push_format="pubsub")
    message = {
        "data": base64.b64encode(b'{"temperature": 21.5}').decode(),
        "messageId": "2070443601311541",
        "publishTime": "2021-02-26T19:13:56Z",
        "orderingKey": "sensor-9",
    }
    response = post(Client(), "pubsub", {**PUSH, "message": message})
    assert response.status_code == 202, response.content
    event = Event.objects.get()
    assert event.data == {"temperature": 21.5}
    assert event.extensions["partitionkey"] == "sensor-9"


@pytest.fixture
def google(recorder, settings):
    """A loopback stand-in for Google's token keys; returns a function that signs tokens."""
    key = new_key()
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    recorder.default = Reply(body={"keys": [{**public, "kid": "key-1", "alg": "RS256"}]})
    settings.SIGNALBOX = {**settings.SIGNALBOX, "PUBSUB_JWKS_URL": f"{recorder.url}/certs"}
    settings.SIGNALBOX_OUTBOUND_ALLOW = ["127.0.0.1"]
    create_webhook(
        slug="pubsub-oidc",
        event_type=TYPE,
        auth_mode="none",
        push_format="pubsub",
        format_options={"audience": AUDIENCE, "service_account_email": ACCOUNT},
    )

    def token(signer=key, kid="key-1", **claims) -> str:
        now = int(time.time())
        body = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 3600,
            "email": ACCOUNT,
            "email_verified": True,
            "sub": "1234567890",
            **claims,
        }
        return jwt.encode(body, signer, algorithm="RS256", headers={"kid": kid})

    return token


def test_pubsub_push_with_a_valid_oidc_token_is_accepted(google):
    response = post(Client(), "pubsub-oidc", PUSH, Authorization=f"Bearer {google()}")
    assert response.status_code == 202, response.content
    assert Event.objects.count() == 1


@pytest.mark.parametrize(
    "bad",
    [
        lambda token: "",
        lambda token: f"Bearer {token(aud='https://elsewhere.example')}",
        lambda token: f"Bearer {token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)}",
        lambda token: f"Bearer {token(iss='https://evil.example')}",
        lambda token: f"Bearer {token(email='someone@else.iam.gserviceaccount.com')}",
        lambda token: f"Bearer {token(email_verified=False)}",
        lambda token: f"Bearer {token(signer=new_key())}",
        lambda token: f"Bearer {token(kid='unknown')}",
    ],
    ids=[
        "missing",
        "other-audience",
        "expired",
        "other-issuer",
        "other-account",
        "unverified-email",
        "forged",
        "unknown-key",
    ],
)
def test_pubsub_push_without_a_valid_oidc_token_is_refused(google, bad):
    response = post(Client(), "pubsub-oidc", PUSH, Authorization=bad(google))
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert not Event.objects.exists()


def test_pubsub_body_that_is_not_a_push_is_a_clear_400(db):
    create_webhook(slug="pubsub", event_type=TYPE, auth_mode="none", push_format="pubsub")
    for body, detail in (
        ({"subscription": "projects/p/subscriptions/s"}, "message must be an object"),
        ({**PUSH, "message": {**PUSH["message"], "data": "%%%"}}, "not base64"),
    ):
        response = post(Client(), "pubsub", body)
        assert response.status_code == 400
        assert detail in response.json()["detail"]
