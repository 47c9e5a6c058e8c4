"""Google Cloud Pub/Sub push subscriptions.

Pub/Sub posts `{"message": {"data": <base64>, "attributes": {...}, "messageId": ...,
"publishTime": ..., "orderingKey": ...}, "subscription": "projects/P/subscriptions/S"}`.
Mapping: id = messageId (redeliveries reuse it), source =
`//pubsub.googleapis.com/<subscription>`, type = the webhook's event type, time =
publishTime, data = the decoded data (its JSON when it is JSON, the text when it is UTF-8,
else kept as base64), `partitionkey` = orderingKey (per-key order), and the attributes as a
JSON string in `pubsubattributes`.

With the option `audience` set, every push must carry the subscription's OIDC token
(`Authorization: Bearer <JWT>`), checked with PyJWT against Google's published keys
(`SIGNALBOX_PUBSUB_JWKS_URL`, fetched through the outbound guard and kept for an hour):
signature (RS256), issuer `accounts.google.com`, the audience, expiry, and with the option
`service_account_email` also the token's verified `email`.

https://cloud.google.com/pubsub/docs/push
https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt

from workflows.events.envelope import InvalidEvent, validate
from workflows.events.push_formats.base import (
    Delivery,
    FormatContext,
    PushFormatError,
    header,
    json_object,
    payload,
    text_field,
)
from workflows.events.webhook_auth import SignatureError

name = "pubsub"
label = "Google Cloud Pub/Sub push subscription"
uses_auth_mode = True
DEFAULT_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
ISSUERS = ["accounts.google.com", "https://accounts.google.com"]
KEYS_LIFETIME_SECONDS = 3600
# An unknown key id fetches the keys again (Google rotates them), at most this often, so
# tokens with made-up key ids cannot make every request a fetch.
REFRESH_AT_MOST_EVERY_SECONDS = 60
_key_sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}  # url -> (fetched at, keys)


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - {"audience", "service_account_email"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    out = {}
    for key in ("audience", "service_account_email"):
        value = options.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value or not value.isprintable():
            raise ValueError(f"{key}: a non-empty string")
        out[key] = value
    if "service_account_email" in out and "audience" not in out:
        raise ValueError("service_account_email: set audience too (the token is checked then)")
    return out


def handshake(headers: Mapping[str, str], ctx: FormatContext) -> dict[str, str] | None:
    return None


def read(headers: Mapping[str, str], body: bytes, ctx: FormatContext) -> Delivery:
    if ctx.options.get("audience"):
        verify_token(header(headers, "Authorization"), ctx)
    push = json_object(body, "Pub/Sub push")
    message = push.get("message")
    if not isinstance(message, dict):
        raise PushFormatError("Pub/Sub push: message must be an object")
    subscription = text_field(push, "subscription", "Pub/Sub push")
    # The push format carries both spellings of each field; either is enough.
    message_id = message.get("messageId") or message.get("message_id")
    publish_time = message.get("publishTime") or message.get("publish_time")
    if not isinstance(message_id, str) or not message_id:
        raise PushFormatError("Pub/Sub push: message.messageId must be a non-empty string")
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": message_id,
        "source": f"//pubsub.googleapis.com/{subscription}",
        "type": ctx.event_type,
    }
    if isinstance(publish_time, str) and publish_time:
        attributes["time"] = publish_time
    if isinstance(message.get("orderingKey"), str) and message["orderingKey"]:
        attributes["partitionkey"] = message["orderingKey"]
    if isinstance(message.get("attributes"), dict) and message["attributes"]:
        attributes["pubsubattributes"] = json.dumps(message["attributes"], sort_keys=True)
    data, media = decode_data(message.get("data"))
    is_base64 = media == "application/octet-stream"
    if data is not None:
        attributes["datacontenttype"] = media
    try:
        return Delivery([validate(attributes, data=data, data_is_base64=is_base64)])
    except InvalidEvent as exc:
        raise PushFormatError(f"Pub/Sub push: {exc}") from exc


def decode_data(encoded: Any) -> tuple[Any, str]:
    """The data and its media type: JSON, UTF-8 text, or bytes kept as base64."""
    if encoded is None or encoded == "":
        return None, ""
    if not isinstance(encoded, str):
        raise PushFormatError("Pub/Sub push: message.data must be a base64 string")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PushFormatError("Pub/Sub push: message.data is not base64") from exc
    try:
        return payload(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return encoded, "application/octet-stream"


def verify_token(authorization: str, ctx: FormatContext) -> None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignatureError("a Pub/Sub push must carry its OIDC token (Authorization: Bearer)")
    token = token.strip()
    try:
        key_id = jwt.get_unverified_header(token).get("kid")
        key = signing_key(key_id, ctx)
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=ctx.options["audience"],
            issuer=ISSUERS,
            options={"require": ["exp", "iat", "iss", "aud"]},
            leeway=30,
        )
    except jwt.PyJWTError as exc:
        raise SignatureError(f"the Pub/Sub OIDC token is not valid: {exc}") from exc
    expected = ctx.options.get("service_account_email")
    if expected and (claims.get("email") != expected or claims.get("email_verified") is not True):
        raise SignatureError("the Pub/Sub OIDC token is not the configured service account's")


def signing_key(key_id: Any, ctx: FormatContext):
    url = ctx.settings.get("PUBSUB_JWKS_URL") or DEFAULT_JWKS_URL
    for refresh in (False, True):
        key_set = key_set_for(url, ctx, refresh=refresh)
        for key in key_set.keys:
            if key.key_id == key_id:
                return key.key
    raise SignatureError("the Pub/Sub OIDC token is signed by an unknown key")


def key_set_for(url: str, ctx: FormatContext, *, refresh: bool) -> jwt.PyJWKSet:
    cached = _key_sets.get(url)
    if cached:
        age = time.monotonic() - cached[0]
        limit = REFRESH_AT_MOST_EVERY_SECONDS if refresh else KEYS_LIFETIME_SECONDS
        if age < limit:
            return cached[1]
    try:
        key_set = jwt.PyJWKSet.from_json(ctx.fetch(url).decode())
    except (jwt.PyJWTError, UnicodeDecodeError, ValueError) as exc:
        raise SignatureError("Google's token keys cannot be read") from exc
    _key_sets[url] = (time.monotonic(), key_set)
    return key_set
