"""Cloud push formats on /hooks/<slug>, Amazon's: SNS (subscription confirmation, signed
notifications, certificates and subscribe URLs only from the SNS hosts) and EventBridge
API destinations, each fed the payloads their documentation publishes.

SNS messages are signed with a key pair made here, whose certificate a loopback server
serves (the SNS host pattern is pointed at it). Azure Event Grid is in
test_cloud_push_eventgrid.py, Google Cloud Pub/Sub in test_cloud_push_pubsub.py, creating
push-format webhooks in test_cloud_push_management.py.

The clouds themselves are played by the test (tests/cloud_pushes.py): nothing here talks
to AWS, Azure or Google.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from unittest import mock

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from django.test import Client

from tests.cloud_pushes import TOPIC, TYPE, certificate_pem, new_key, post
from tests.http_recorder import Reply
from workflows.events import webhooks as webhook_service
from workflows.events.models import Event
from workflows.events.push_formats import sns
from workflows.events.webhooks import InvalidWebhook, create_webhook

pytestmark = pytest.mark.django_db


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
