"""Verifying inbound webhook requests, one function per authentication mode.

Pure: no Django, no database. The caller passes the plaintext secret, the request headers,
the raw body bytes and the current time; a failed check raises SignatureError, a passed one
returns the sender's delivery id (or None when the sender gave none).

- **standard** (the default): Standard Webhooks. The sender signs
  ``"{webhook-id}.{webhook-timestamp}.{body}"`` with HMAC-SHA256 under the base64 key in a
  ``whsec_...`` secret and sends ``webhook-signature: v1,<base64>`` (several space-separated
  signatures are allowed, for key rotation). The timestamp must be within five minutes of
  now, either way. The id is part of the signed text, so it cannot be swapped on a replay:
  a replay inside the window is deduplicated by id, a replay after it fails the timestamp.
- **github**: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; the delivery
  id comes from ``X-GitHub-Delivery``. GitHub signs neither a timestamp nor the delivery id,
  so an honest redelivery is deduplicated, but a captured request can be replayed under a
  new delivery id. Prefer the standard mode when the sender supports it.
- **header**: the secret itself travels in a configured header. Anyone who can replay such a
  request also holds the secret, so replay protection adds nothing here; the delivery id
  (``Idempotency-Key``, else ``X-Request-Id``) only deduplicates the sender's own retries.
- **none**: no check; ids as in the header mode.

We verify ourselves rather than through ``standardwebhooks.Webhook.verify`` (whose signing
the tests use as the reference client) because that one decodes the body as UTF-8 before
signing, lets ``ValueError``/``binascii.Error`` escape on a malformed header, accepts
fractional timestamps that it then floors, and cannot be given a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping

MODES = ("standard", "github", "header", "none")
TOLERANCE_SECONDS = 5 * 60
STANDARD_PREFIX = "whsec_"
# The Standard Webhooks spec asks for 24 to 64 bytes of key; we refuse anything shorter.
MIN_STANDARD_KEY_BYTES = 24
MIN_SHARED_SECRET_CHARS = 16
MAX_SECRET_CHARS = 512
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
# Headers a shared secret must not be read from: the proxy or the client sets them itself.
RESERVED_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "cookie"}
ID_HEADERS = ("idempotency-key", "x-request-id")
TIMESTAMP = re.compile(r"^\d{1,15}$")


class SignatureError(Exception):
    """The request is not authentic (or not fresh). The message says why, never the secret."""


def new_secret(mode: str) -> str | None:
    """A fresh secret for `mode`: ``whsec_`` + 32 random bytes in base64 for the standard
    mode, 32 random bytes in URL-safe base64 for github and header, None for none."""
    if mode == "standard":
        return STANDARD_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    if mode in ("github", "header"):
        return secrets.token_urlsafe(32)
    return None


def standard_key(secret: str) -> bytes:
    """The HMAC key in a Standard Webhooks secret (``whsec_`` prefix optional, as in the
    reference libraries). Raises ValueError for a secret that is not base64."""
    encoded = secret.strip().removeprefix(STANDARD_PREFIX)
    try:
        # The reference libraries accept unpadded base64; so do we.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from exc
    if not key:
        raise ValueError("the Standard Webhooks secret is empty")
    return key


def check_secret(mode: str, secret: str | None) -> None:
    """Raise ValueError when `secret` is not usable for `mode`."""
    if mode not in MODES:
        raise ValueError(f"auth mode must be one of {', '.join(MODES)}")
    if mode == "none":
        if secret:
            raise ValueError("auth mode none takes no secret")
        return
    if not secret:
        raise ValueError(f"auth mode {mode} needs a secret")
    if len(secret) > MAX_SECRET_CHARS:
        raise ValueError(f"a secret is at most {MAX_SECRET_CHARS} characters")
    if mode == "standard":
        if len(standard_key(secret)) < MIN_STANDARD_KEY_BYTES:
            raise ValueError(
                f"a Standard Webhooks key must hold at least {MIN_STANDARD_KEY_BYTES} bytes"
            )
    elif len(secret) < MIN_SHARED_SECRET_CHARS:
        raise ValueError(f"a secret is at least {MIN_SHARED_SECRET_CHARS} characters")
    elif not secret.isprintable() or not secret.isascii() or secret != secret.strip():
        # Header values cannot carry anything else reliably.
        raise ValueError("a secret is printable ASCII without leading or trailing spaces")


def check_header_name(name: str) -> None:
    if not HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"the secret cannot travel in the {name} header")


def verify(
    mode: str,
    *,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    header_name: str = "",
    now: float | None = None,
) -> str | None:
    """Check the request for `mode`; return the sender's delivery id, or None if it gave
    none. Raises SignatureError."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if mode == "standard":
        return verify_standard(secret, lowered, body, now=time.time() if now is None else now)
    if mode == "github":
        verify_github(secret, lowered, body)
        return lowered.get("x-github-delivery") or None
    if mode == "header":
        verify_header(secret, lowered, header_name)
    elif mode != "none":
        raise SignatureError(f"unknown auth mode {mode!r}")
    return next((lowered[h] for h in ID_HEADERS if lowered.get(h)), None)


def verify_standard(secret: str, headers: Mapping[str, str], body: bytes, *, now: float) -> str:
    """Standard Webhooks; `headers` has lower-case names. Returns the webhook-id."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", signatures),
        )
        if not value
    ]
    if missing:
        raise SignatureError(f"missing header(s): {', '.join(missing)}")
    if not TIMESTAMP.match(stamp):
        raise SignatureError("webhook-timestamp must be whole seconds since the Unix epoch")
    skew = int(stamp) - now
    if skew < -TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes old")
    if skew > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes in the future")
    try:
        key = standard_key(secret)
    except ValueError as exc:
        raise SignatureError("this webhook's secret is not a valid whsec_ secret") from exc
    # Signed over the raw bytes: no decoding, so any body verifies exactly as sent.
    expected = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue  # other schemes (v1a: asymmetric) are not configured here
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return msg_id
    raise SignatureError("no webhook-signature matches")


def verify_github(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    given = headers.get("x-hub-signature-256", "")
    if not given:
        raise SignatureError("missing header: X-Hub-Signature-256")
    scheme, _, digest = given.partition("=")
    if scheme != "sha256" or not digest:
        raise SignatureError("X-Hub-Signature-256 must be sha256=<hex digest>")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    # Bytes, not str: compare_digest refuses non-ASCII str, and the header is attacker input.
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise SignatureError("X-Hub-Signature-256 does not match")


def verify_header(secret: str, headers: Mapping[str, str], header_name: str) -> None:
    given = headers.get(header_name.lower(), "")
    if not given:
        raise SignatureError(f"missing header: {header_name}")
    if not hmac.compare_digest(secret.encode(), given.encode()):
        raise SignatureError(f"{header_name} does not match")
