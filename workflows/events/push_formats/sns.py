"""Amazon SNS HTTP(S) subscriptions.

SNS posts JSON messages of three types. Each is signed by SNS with the key of the X.509
certificate at `SigningCertURL` (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA) over
"Key\\nValue\\n" pairs of the fields AWS lists for the type. We verify every message, fetch
the certificate only from an SNS host (`SNS_CERT_URL_PATTERN`, checked before any connection)
and keep it, and accept only the topics the webhook names: any AWS account can create a topic,
so a valid SNS signature alone proves nothing about who sent it.

- SubscriptionConfirmation: confirmed by a GET of its `SubscribeURL` (an SNS host too); no
  event.
- UnsubscribeConfirmation: acknowledged; no event.
- Notification: one event: id = MessageId (SNS retries reuse it, so dedupe holds), source =
  TopicArn, time = Timestamp, subject = Subject, data = Message (its JSON when it is JSON),
  `partitionkey` = MessageGroupId (FIFO topics: per-group order), `snsattributes` = the
  MessageAttributes as a JSON string.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from workflows.events.envelope import InvalidEvent, validate
from workflows.events.push_formats.base import (
    Delivery,
    FormatContext,
    PushFormatError,
    json_object,
    payload,
    text_field,
)
from workflows.events.webhook_auth import SignatureError

name = "sns"
label = "Amazon SNS HTTP(S) subscription"
uses_auth_mode = False

# Where SNS's certificates and subscription URLs live (SIGNALBOX_SNS_URL_PATTERN overrides,
# e.g. for an SNS-compatible service).
DEFAULT_URL_PATTERN = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_FIELDS["UnsubscribeConfirmation"] = SIGNED_FIELDS["SubscriptionConfirmation"]
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
MAX_CERTIFICATES = 64
_certificates: dict[str, rsa.RSAPublicKey] = {}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - {"topic_arns"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    topics = options.get("topic_arns")
    if not isinstance(topics, list) or not topics:
        raise ValueError("topic_arns: list the SNS topic ARNs this webhook accepts")
    for topic in topics:
        if not isinstance(topic, str) or not TOPIC_ARN.match(topic):
            raise ValueError(f"topic_arns: {topic!r} is not an SNS topic ARN")
    return {"topic_arns": list(topics)}


def handshake(headers: Mapping[str, str], ctx: FormatContext) -> dict[str, str] | None:
    return None


def read(headers: Mapping[str, str], body: bytes, ctx: FormatContext) -> Delivery:
    message = json_object(body, "SNS")
    kind = text_field(message, "Type", "SNS")
    if kind not in SIGNED_FIELDS:
        raise PushFormatError(f"SNS: unknown message Type {kind!r}")
    verify(message, kind, ctx)
    topic = message["TopicArn"]
    if topic not in ctx.options.get("topic_arns", ()):
        raise SignatureError(f"SNS topic {topic} is not one this webhook accepts")
    if kind == "SubscriptionConfirmation":
        subscribe_url = message["SubscribeURL"]
        if not sns_url(subscribe_url, ctx):
            raise PushFormatError("SNS: SubscribeURL is not an SNS address")
        ctx.fetch(subscribe_url)
        return Delivery([], reply={"confirmed": True, "topic": topic})
    if kind == "UnsubscribeConfirmation":
        return Delivery([], reply={"unsubscribed": True, "topic": topic})
    return Delivery([notification_event(message, ctx)])


def notification_event(message: Mapping[str, Any], ctx: FormatContext):
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": message["MessageId"],
        "source": message["TopicArn"],
        "type": ctx.event_type,
        "time": message["Timestamp"],
    }
    data, attributes["datacontenttype"] = payload(message["Message"])
    if message.get("Subject"):
        attributes["subject"] = message["Subject"]
    if isinstance(message.get("MessageGroupId"), str) and message["MessageGroupId"]:
        attributes["partitionkey"] = message["MessageGroupId"]
    if isinstance(message.get("MessageAttributes"), dict) and message["MessageAttributes"]:
        attributes["snsattributes"] = json.dumps(message["MessageAttributes"], sort_keys=True)
    try:
        return validate(attributes, data=data, data_is_base64=False)
    except InvalidEvent as exc:
        raise PushFormatError(f"SNS: {exc}") from exc


def verify(message: Mapping[str, Any], kind: str, ctx: FormatContext) -> None:
    fields = SIGNED_FIELDS[kind]
    for field in fields:
        if field != "Subject":
            text_field(message, field, f"SNS {kind}")
    version = str(message.get("SignatureVersion", ""))
    if version not in HASHES:
        raise SignatureError(f"SNS SignatureVersion {version!r} is not 1 or 2")
    cert_url = text_field(message, "SigningCertURL", "SNS")
    if not sns_url(cert_url, ctx) or not urlsplit(cert_url).path.endswith(".pem"):
        # Checked before any connection: only SNS's own certificates can vouch for a message.
        raise SignatureError("SNS SigningCertURL is not an SNS certificate address")
    try:
        signature = base64.b64decode(text_field(message, "Signature", "SNS"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("SNS Signature is not base64") from exc
    signed = "".join(
        f"{field}\n{message[field]}\n"
        for field in fields
        if field != "Subject" or isinstance(message.get("Subject"), str)
    )
    key = certificate_key(cert_url, ctx)
    try:
        key.verify(signature, signed.encode(), padding.PKCS1v15(), HASHES[version]())
    except InvalidSignature as exc:
        raise SignatureError("the SNS signature does not match the message") from exc


def certificate_key(url: str, ctx: FormatContext) -> rsa.RSAPublicKey:
    """The RSA key of the certificate at `url`, fetched once per process."""
    key = _certificates.get(url)
    if key is None:
        try:
            certificate = x509.load_pem_x509_certificate(ctx.fetch(url))
        except ValueError as exc:
            raise SignatureError("the SNS signing certificate cannot be read") from exc
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureError("the SNS signing certificate has no RSA key")
        if len(_certificates) >= MAX_CERTIFICATES:
            _certificates.clear()
        _certificates[url] = key
    return key


def sns_url(url: str, ctx: FormatContext) -> bool:
    """Whether `url` is on an SNS host; checked before any connection to it."""
    pattern = ctx.settings.get("SNS_URL_PATTERN") or DEFAULT_URL_PATTERN
    return bool(re.match(pattern, url))
