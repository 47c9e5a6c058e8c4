"""What every connector is: a source of `Message`s that are acknowledged only after the
events made from them are committed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar


class InvalidConnection(ValueError):
    """A connection's configuration that cannot work (shown to the operator as is)."""


@dataclass(frozen=True)
class ConnectionConfig:
    """A snapshot of a Connection row plus its password (kept between queries; never logged)."""

    name: str
    kind: str
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    default_type: str = ""

    def fingerprint(self) -> tuple:
        """Changes whenever the connector must be started again with the new settings."""
        return (
            self.kind,
            self.url,
            self.username,
            self.password,
            sorted(self.options.items()),
            self.default_type,
        )


@dataclass
class Message:
    """One message as received, in the terms of the CloudEvents protocol bindings."""

    body: bytes
    content_type: str  # the message's content type ("" when it has none)
    attributes: dict[str, str]  # CloudEvents attributes from headers/properties, prefix gone
    key: str  # the broker's natural key: routing key, subject or topic
    fallback_id: str  # a stable id the broker gives the message, used when it names none
    redelivered: bool = False
    token: Any = None  # what the connector needs to acknowledge it


def consumes(options: dict[str, Any]) -> bool:
    """Whether a connection is read as a source. `"consume": false` marks one that only
    the `publish` step uses: no connector thread reads it."""
    return options.get("consume", True) is not False


class Connector:
    """One connection's client. Subclasses implement the five methods below and register
    themselves (`registry.register`). A connector is used by a single thread."""

    kind: ClassVar[str]
    scheme: ClassVar[str]  # the URL scheme(s) it accepts, e.g. "amqp"
    option_names: ClassVar[tuple[str, ...]] = ()
    required_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ConnectionConfig):
        self.config = config

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options, checked; raises InvalidConnection. Extend for typed options."""
        known = (*cls.option_names, "consume")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidConnection(
                f"unknown option {unknown[0]!r} for {cls.kind} (known: {', '.join(known)})"
            )
        if not isinstance(options.get("consume", True), bool):
            raise InvalidConnection("consume is true or false")
        if not consumes(options):  # publish only: the source's options are not needed
            return options
        missing = [name for name in cls.required_options if not options.get(name)]
        if missing:
            raise InvalidConnection(f"{cls.kind} needs the option {missing[0]!r}")
        return options

    def connect(self) -> None:
        """Connect and start consuming; raises on failure (the caller backs off)."""
        raise NotImplementedError

    def receive(self, *, timeout: float, max_messages: int) -> list[Message]:
        """Up to `max_messages` messages, waiting at most `timeout` seconds for the first."""
        raise NotImplementedError

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge messages whose events are committed (or dead-lettered)."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the connection; unacknowledged messages go back to the broker."""
        raise NotImplementedError


class Backoff:
    """Exponential back-off with full jitter between reconnects, reset on success."""

    def __init__(self, *, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap, self.failures = first, cap, 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.first * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0
