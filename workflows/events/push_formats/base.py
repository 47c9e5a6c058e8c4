"""What a push format is: a reader that turns one authentic request into CloudEvents."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from workflows.events.envelope import Envelope, InvalidEvent, loads_json


class PushFormatError(ValueError):
    """The body is not a delivery of this format (answered 400, naming what is wrong)."""


class FetchFailed(Exception):
    """A certificate, key set or confirmation URL could not be fetched (answered 502, so the
    sender retries)."""


@dataclass(frozen=True)
class FormatContext:
    """What a format may use besides the request: the webhook's slug, event type and format
    options, the settings it reads, a guarded HTTP GET and the clock."""

    slug: str
    event_type: str
    options: Mapping[str, Any]
    fetch: Callable[[str], bytes]
    now: float
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """The events a request carries (committed together), or none with `reply` for a
    control message such as a subscription confirmation."""

    envelopes: list[Envelope]
    reply: dict[str, Any] | None = None


class PushFormat(Protocol):
    name: str
    label: str
    # Whether the webhook's own authentication (auth_mode) applies: false for formats whose
    # messages carry their own signature (SNS).
    uses_auth_mode: bool

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options as stored; raises ValueError naming the wrong one."""

    def handshake(self, headers: Mapping[str, str], ctx: FormatContext) -> dict[str, str] | None:
        """Headers answering an OPTIONS validation request, or None (not supported)."""

    def read(self, headers: Mapping[str, str], body: bytes, ctx: FormatContext) -> Delivery:
        """Authenticate (if the format signs) and parse; raises PushFormatError or
        workflows.webhooks.SignatureError."""


def header(headers: Mapping[str, str], name: str) -> str:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), "")


def json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = loads_json(body)
    except InvalidEvent as exc:
        raise PushFormatError(f"not a {what} delivery: {exc}") from exc
    if not isinstance(parsed, dict):
        raise PushFormatError(f"not a {what} delivery: the body is not a JSON object")
    return parsed


def text_field(obj: Mapping[str, Any], name: str, what: str, *, required: bool = True) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise PushFormatError(f"{what}: {name} must be a non-empty string")
    return value


def no_options(options: Mapping[str, Any]) -> dict[str, Any]:
    if options:
        raise ValueError(f"this format takes no options (got {', '.join(sorted(options))})")
    return {}


def payload(text: str) -> tuple[Any, str]:
    """A message body as event data and its media type: its JSON when it is JSON, else the
    text itself as text/plain."""
    try:
        return loads_json(text.encode()), "application/json"
    except InvalidEvent:
        return text, "text/plain"
