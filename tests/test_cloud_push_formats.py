"""Cloud push formats on /hooks/<slug>: Amazon SNS, Amazon EventBridge API destinations,
Azure Event Grid (CloudEvents schema) and Google Cloud Pub/Sub push, each fed the payloads
their documentation publishes.

The clouds themselves are played by the test: SNS messages are signed with a key pair made
here, whose certificate a loopback server serves (the SNS host pattern is pointed at it);
Pub/Sub OIDC tokens are signed with another, whose key set the loopback server serves as
Google's would be.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import time
import uuid
from unittest import mock

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from tests.http_recorder import Reply
from workflows.access.tokens import create_api_token
from workflows.events import webhooks as webhook_service
from workflows.events.models import Event, Webhook
from workflows.events.push_formats import sns
from workflows.events.webhooks import InvalidWebhook, create_webhook

pytestmark = pytest.mark.django_db
TYPE = "com.example.cloud.pushed"
TOPIC = "arn:aws:sns:us-west-2:123456789012:MyTopic"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def post(client: Client, slug: str, body, content_type="application/json", **headers):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/hooks/{slug}", data=data, content_type=content_type, headers=headers)


# --- Amazon SNS -------------------------------------------------------------------------


@pytest.fixture
def sns_cloud(recorder, settings):
    """A loopback 'SNS': serves the signing certificate and records confirmation GETs."""
    key = new_key()
    recorder.default = Reply(body=certificate_pem(key))
    settings.SIGNALBOX = {**settings.SIGNALBOX, "SNS_URL_PATTERN": rf"^{recorder.url}/"}
    settings.SIGNALBOX_OUTBOUND_ALLOW = ["127.0.0.1"]
    create_webhook(
        slug="sns",
        event_type=TYPE,
        auth_mode="none",
        push_format="sns",
        format_options={"topic_arns": [TOPIC]},
    )
    return key, recorder


def sns_signed(key, message: dict, *, version: str = "1") -> dict:
    fields = sns.SIGNED_FIELDS[message["Type"]]
    text = "".join(f"{f}\n{message[f]}\n" for f in fields if f in message)
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode(), padding.PKCS1v15(), digest)
    return {
        **message,
        "SignatureVersion": version,
        "Signature": base64.b64encode(signature).decode(),
    }


def sns_notification(recorder, **overrides) -> dict:
    # The example from "Parsing message formats" in the Amazon SNS developer guide.
    message = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Subject": "My First Message",
        "Message": "Hello world!",
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "SigningCertURL": f"{recorder.url}/SimpleNotificationService-f3ecfb7224c7.pem",
        "UnsubscribeURL": f"{recorder.url}/?Action=Unsubscribe&SubscriptionArn={TOPIC}:c9135db0",
    }
    return {**message, **overrides}


def test_sns_subscription_confirmation_is_confirmed_by_a_get_of_its_subscribe_url(sns_cloud):
    key, recorder = sns_cloud
    message = sns_signed(
        key,
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a",
            "TopicArn": TOPIC,
            "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the "
            "subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": f"{recorder.url}/?Action=ConfirmSubscription&TopicArn={TOPIC}"
            "&Token=2336412f37fb",
            "Timestamp": "2012-04-26T20:45:04.751Z",
            "SigningCertURL": f"{recorder.url}/SimpleNotificationService-f3ecfb7224c7.pem",
        },
    )
    response = post(Client(), "sns", message, content_type="text/plain; charset=UTF-8")
    assert response.status_code == 200, response.content
    assert response.json() == {"confirmed": True, "topic": TOPIC}
    paths = [r.path for r in recorder.requests]
    assert any(p.startswith("/?Action=ConfirmSubscription") for p in paths), paths
    assert not Event.objects.exists()


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_notification_becomes_one_event_and_a_redelivery_is_a_duplicate(sns_cloud, version):
    key, recorder = sns_cloud
    message = sns_signed(key, sns_notification(recorder), version=version)
    client = Client()
    first = post(client, "sns", message, content_type="text/plain; charset=UTF-8")
    assert first.status_code == 202, first.content
    event = Event.objects.get()
    assert (event.ce_id, event.source, event.type) == (message["MessageId"], TOPIC, TYPE)
    assert event.subject == "My First Message"
    assert event.data == "Hello world!"
    assert event.datacontenttype == "text/plain"
    again = post(client, "sns", message, content_type="text/plain; charset=UTF-8")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert Event.objects.count() == 1


def test_sns_json_message_fifo_group_and_attributes(sns_cloud):
    key, recorder = sns_cloud
    message = sns_signed(
        key,
        sns_notification(
            recorder,
            MessageId=str(uuid.uuid4()),
            Message=json.dumps({"order": 42}),
            MessageGroupId="customer-7",
            MessageAttributes={"store": {"Type": "String", "Value": "example_corp"}},
        ),
    )
    assert post(Client(), "sns", message).status_code == 202
    event = Event.objects.get()
    assert event.data == {"order": 42}
    assert event.extensions["partitionkey"] == "customer-7"
    assert json.loads(event.extensions["snsattributes"])["store"]["Value"] == "example_corp"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: {**m, "Message": "Hello world, changed"},
        lambda m: {**m, "Signature": base64.b64encode(b"x" * 256).decode()},
        lambda m: {**m, "SignatureVersion": "3"},
    ],
    ids=["changed-message", "wrong-signature", "unknown-version"],
)
def test_sns_message_that_does_not_verify_is_refused(sns_cloud, tamper):
    key, recorder = sns_cloud
    response = post(Client(), "sns", tamper(sns_signed(key, sns_notification(recorder))))
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert not Event.objects.exists()


def test_sns_signed_message_from_another_topic_is_refused(sns_cloud):
    key, recorder = sns_cloud
    other = "arn:aws:sns:us-west-2:999999999999:SomeoneElses"
    response = post(Client(), "sns", sns_signed(key, sns_notification(recorder, TopicArn=other)))
    assert response.status_code == 401
    assert "not one this webhook accepts" in response.json()["detail"]
    assert not Event.objects.exists()


def test_sns_certificate_off_the_sns_hosts_is_refused_before_any_connection(sns_cloud):
    key, recorder = sns_cloud
    message = sns_signed(
        key, sns_notification(recorder, SigningCertURL="https://sns.evil.example/cert.pem")
    )
    with mock.patch.object(webhook_service, "fetch") as fetch:
        response = post(Client(), "sns", message)
    assert response.status_code == 401
    assert "not an SNS certificate address" in response.json()["detail"]
    fetch.assert_not_called()


def test_sns_subscribe_url_off_the_sns_hosts_is_not_fetched(sns_cloud):
    key, recorder = sns_cloud
    message = sns_signed(
        key,
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": "t",
            "TopicArn": TOPIC,
            "Message": "confirm",
            "SubscribeURL": "https://attacker.example/?Action=ConfirmSubscription",
            "Timestamp": "2012-04-26T20:45:04.751Z",
            "SigningCertURL": f"{recorder.url}/SimpleNotificationService-f3ecfb7224c7.pem",
        },
    )
    with mock.patch.object(webhook_service, "fetch", wraps=webhook_service.fetch) as fetch:
        response = post(Client(), "sns", message)
    assert response.status_code == 400
    assert "SubscribeURL is not an SNS address" in response.json()["detail"]
    # Refused before any connection: only the (loopback) certificate was fetched.
    assert [c.args[0] for c in fetch.call_args_list] == [message["SigningCertURL"]]


def test_sns_certificate_that_cannot_be_fetched_answers_502_so_sns_retries(sns_cloud):
    key, recorder = sns_cloud
    recorder.default = Reply(status=404, body={"error": "gone"})
    message = sns_signed(key, sns_notification(recorder, SigningCertURL=f"{recorder.url}/n.pem"))
    response = post(Client(), "sns", message)
    assert response.status_code == 502
    assert response["Content-Type"] == "application/problem+json"
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"auth_mode": "standard", "format_options": {"topic_arns": [TOPIC]}}, "auth_mode"),
        ({"auth_mode": "none", "format_options": {}}, "format_options"),
        ({"auth_mode": "none", "format_options": {"topic_arns": ["not-an-arn"]}}, "format_options"),
    ],
)
def test_sns_webhook_needs_no_auth_mode_and_its_topics(fields, field):
    with pytest.raises(InvalidWebhook) as caught:
        create_webhook(slug="bad-sns", event_type=TYPE, push_format="sns", **fields)
    assert caught.value.field == field


# --- Amazon EventBridge API destinations -------------------------------------------------

EC2_EVENT = {
    # The example event from "Amazon EventBridge events" in the EventBridge user guide.
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "111122223333",
    "time": "2017-12-22T18:43:48Z",
    "region": "us-west-1",
    "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
    "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"},
}


@pytest.fixture
def eventbridge_hook():
    _hook, secret = create_webhook(
        slug="eventbridge",
        event_type=TYPE,
        auth_mode="header",
        header_name="x-api-key",
        push_format="eventbridge",
    )
    return secret


def test_eventbridge_event_becomes_a_cloudevent_with_its_envelope_in_extensions(
    eventbridge_hook,
):
    response = post(Client(), "eventbridge", EC2_EVENT, **{"x-api-key": eventbridge_hook})
    assert response.status_code == 202, response.content
    event = Event.objects.get()
    assert (event.ce_id, event.source, event.type) == (EC2_EVENT["id"], "aws.ec2", TYPE)
    assert event.data == EC2_EVENT["detail"]
    assert event.time == dt.datetime(2017, 12, 22, 18, 43, 48, tzinfo=dt.UTC)
    assert event.extensions["awsdetailtype"] == "EC2 Instance State-change Notification"
    assert event.extensions["awsaccount"] == "111122223333"
    assert event.extensions["awsregion"] == "us-west-1"
    assert event.extensions["awsresources"] == EC2_EVENT["resources"][0]


def test_eventbridge_without_the_api_key_is_refused(eventbridge_hook):
    response = post(Client(), "eventbridge", EC2_EVENT, **{"x-api-key": "wrong-" * 4})
    assert response.status_code == 401
    assert not Event.objects.exists()


def test_eventbridge_body_that_is_not_an_eventbridge_event_is_a_clear_400(eventbridge_hook):
    body = {k: v for k, v in EC2_EVENT.items() if k != "detail"}
    response = post(Client(), "eventbridge", body, **{"x-api-key": eventbridge_hook})
    assert response.status_code == 400
    assert response.json()["detail"] == "EventBridge event: detail is missing"


# --- Azure Event Grid, CloudEvents schema ------------------------------------------------

BLOB_CREATED = {
    # The Blob storage example from "CloudEvents v1.0 schema with Azure Event Grid".
    "specversion": "1.0",
    "type": "Microsoft.Storage.BlobCreated",
    "source": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/"
    "providers/Microsoft.Storage/storageAccounts/gridtesting",
    "id": "9aeb0fdf-c01e-0131-0922-9eb54906e209",
    "time": "2019-11-18T15:13:39.4589254Z",
    "subject": "blobServices/default/containers/testcontainer/blobs/new-file.png",
    "dataschema": "#",
    "data": {
        "api": "PutBlockList",
        "clientRequestId": "4c5dd7fb-2c48-4a27-bb30-5361b5de920a",
        "requestId": "9aeb0fdf-c01e-0131-0922-9eb549000000",
        "eTag": "0x8D76C39E4407333",
        "contentType": "image/png",
        "contentLength": 30699,
        "blobType": "BlockBlob",
        "url": "https://gridtesting.blob.core.windows.net/testcontainer/new-file.png",
        "sequencer": "000000000000000000000000000099240000000000c41c18",
        "storageDiagnostics": {"batchId": "681fe319-3006-00a8-0022-9e7cde000000"},
    },
}


@pytest.fixture
def eventgrid_hook():
    _hook, secret = create_webhook(
        slug="eventgrid",
        event_type=TYPE,
        auth_mode="header",
        header_name="x-grid-secret",
        push_format="eventgrid",
    )
    return secret


def test_eventgrid_validation_handshake_allows_its_origin(eventgrid_hook):
    response = Client().options(
        "/hooks/eventgrid", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response["WebHook-Allowed-Rate"] == "*"


def test_eventgrid_handshake_from_another_origin_is_refused(eventgrid_hook):
    response = Client().options(
        "/hooks/eventgrid", headers={"WebHook-Request-Origin": "attacker.example"}
    )
    assert response.status_code == 403
    assert "WebHook-Allowed-Origin" not in response
    assert Client().options("/hooks/no-such-hook").status_code == 404


def test_eventgrid_cloudevent_keeps_its_own_attributes(eventgrid_hook):
    response = post(
        Client(),
        "eventgrid",
        BLOB_CREATED,
        content_type="application/cloudevents+json; charset=utf-8",
        **{"x-grid-secret": eventgrid_hook},
    )
    assert response.status_code == 202, response.content
    event = Event.objects.get()
    assert (event.ce_id, event.type) == (BLOB_CREATED["id"], "Microsoft.Storage.BlobCreated")
    assert event.source == BLOB_CREATED["source"]
    assert event.data["contentLength"] == 30699
    assert event.dataschema == ""  # Azure's placeholder "#" names no schema


def test_eventgrid_batch_is_stored_whole_or_not_at_all(eventgrid_hook):
    second = {**BLOB_CREATED, "id": str(uuid.uuid4())}
    broken = {**BLOB_CREATED, "id": str(uuid.uuid4()), "specversion": "0.3"}
    headers = {"x-grid-secret": eventgrid_hook}
    batch = "application/cloudevents-batch+json"
    refused = post(Client(), "eventgrid", [second, broken], content_type=batch, **headers)
    assert refused.status_code == 400
    assert not Event.objects.exists()
    accepted = post(Client(), "eventgrid", [BLOB_CREATED, second], content_type=batch, **headers)
    assert accepted.status_code == 202, accepted.content
    assert [e["ce_id"] for e in accepted.json()["events"]] == [BLOB_CREATED["id"], second["id"]]
    assert Event.objects.count() == 2


def test_eventgrid_delivery_without_its_secret_is_refused(eventgrid_hook):
    response = post(
        Client(), "eventgrid", BLOB_CREATED, content_type="application/cloudevents+json"
    )
    assert response.status_code == 401


# --- Google Cloud Pub/Sub push -----------------------------------------------------------

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


# --- The management API ------------------------------------------------------------------


def test_api_creates_a_push_format_webhook_and_shows_its_format(db):
    _token, plaintext = create_api_token(name="cloud", role="admin")
    client = Client(headers={"Authorization": f"Bearer {plaintext}"})
    created = client.post(
        "/api/v1/webhooks",
        {
            "slug": "orders-sns",
            "event_type": TYPE,
            "auth_mode": "none",
            "push_format": "sns",
            "format_options": {"topic_arns": [TOPIC]},
        },
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["push_format"] == "sns"
    assert created.json()["format_options"] == {"topic_arns": [TOPIC]}
    assert Webhook.objects.get(slug="orders-sns").push_format == "sns"
    refused = client.post(
        "/api/v1/webhooks",
        {"slug": "x", "event_type": TYPE, "push_format": "kinesis"},
        content_type="application/json",
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "push_format"


def test_cli_creates_a_push_format_webhook_and_refuses_bad_options(db):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "webhooks",
        "create",
        "grid",
        "--type",
        TYPE,
        "--auth",
        "header",
        "--format",
        "eventgrid",
        "--options",
        '{"allowed_origins": ["eventgrid.azure.net"]}',
        stdout=out,
        stderr=err,
    )
    assert "url:    /hooks/grid" in out.getvalue()
    assert "(eventgrid, header)" in err.getvalue()
    hook = Webhook.objects.get(slug="grid")
    assert hook.format_options == {"allowed_origins": ["eventgrid.azure.net"]}
    for options, message in (
        ("{not json", "--options: not JSON"),
        ('{"topic_arns": []}', "format_options: topic_arns"),
    ):
        with pytest.raises(CommandError, match=message):
            call_command(
                "webhooks",
                "create",
                "sns2",
                "--type",
                TYPE,
                "--auth",
                "none",
                "--format",
                "sns",
                "--options",
                options,
                stdout=io.StringIO(),
                stderr=io.StringIO(),
            )
