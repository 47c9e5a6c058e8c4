"""Sinks: a CloudEvent out to a broker, after the CloudEvents protocol bindings.

The `publish` step (workflows/steps/publish.py) hands a sink an `Outgoing` message and a
target (exchange and routing key, subject, topic) and gets back a receipt once the broker
has taken the message: a publisher confirm (AMQP), a PUBACK (MQTT QoS 1), a JetStream
PubAck, a Kafka delivery report, or a flush of the core NATS connection. Each connector
module registers its sink beside its source (`registry.register_sink`).

A sink opens a client (`Sink.open`: a connection, a channel in confirm mode, a producer)
that a worker process keeps for the next publishes to the same connection
(sink_clients.py): one broker handshake per connection and process, not per publish. A
client is checked before each use (`usable`), dropped after any failure, and a publish that
fails as retryable on a reused client is tried once more on a new one, so a broker that
restarted since the last publish costs a reconnect, not a failed attempt.

The message id is the CloudEvent id, which the publish step derives from the attempt's
idempotency key, so a retried step sends the same id: JetStream drops it as a duplicate
within the stream's duplicate window (`Nats-Msg-Id`); a Signalbox source (or any consumer
that dedupes on source and id) stores it once; the other brokers pass both copies on.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from workflows.events.connectors import sink_clients
from workflows.events.connectors.base import ConnectionConfig, InvalidConnection
from workflows.events.connectors.sink_errors import SinkError, unreachable
from workflows.events.envelope import Envelope

__all__ = [
    "MODES",
    "STRUCTURED",
    "Outgoing",
    "Sink",
    "SinkClient",
    "SinkError",
    "encode",
    "unreachable",
]

STRUCTURED = "application/cloudevents+json"
MODES = ("binary", "structured")


@dataclass(frozen=True)
class Outgoing:
    """One CloudEvent as a message, in the terms every binding shares."""

    id: str
    body: bytes
    content_type: str  # the message's content type ("" when the event has no data type)
    attributes: dict[str, str]  # binary mode: every attribute but datacontenttype; else {}
    key: str  # the event's partition key ("" when it has none)


def attribute_text(value: Any) -> str:
    """A CloudEvents attribute as its canonical string (spec 1.0.2, type system)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _attributes(envelope: Envelope) -> dict[str, Any]:
    out: dict[str, Any] = {
        "specversion": envelope.specversion,
        "id": envelope.id,
        "source": envelope.source,
        "type": envelope.type,
    }
    for name in ("subject", "datacontenttype", "dataschema"):
        if getattr(envelope, name):
            out[name] = getattr(envelope, name)
    if envelope.time is not None:
        out["time"] = envelope.time
    out.update(envelope.extensions)
    return out


def _data_bytes(envelope: Envelope) -> bytes:
    if envelope.data is None:
        return b""
    if envelope.data_is_base64:
        return base64.b64decode(envelope.data)
    media = envelope.datacontenttype.split(";", 1)[0].strip().lower()
    if isinstance(envelope.data, str) and not (media == "application/json" or "+json" in media):
        return envelope.data.encode()
    return json.dumps(envelope.data, separators=(",", ":"), ensure_ascii=False).encode()


def encode(envelope: Envelope, *, mode: str) -> Outgoing:
    """The envelope as a message in `mode` ("binary" or "structured")."""
    key = attribute_text(envelope.extensions.get("partitionkey", ""))
    if mode == "structured":
        # JSON keeps integers and booleans as they are (the structured format's own types).
        obj = {
            name: v if isinstance(v, (bool, int)) else attribute_text(v)
            for name, v in _attributes(envelope).items()
        }
        if envelope.data_is_base64:
            obj["data_base64"] = envelope.data
        elif envelope.data is not None:
            obj["data"] = envelope.data
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        return Outgoing(envelope.id, body, STRUCTURED, {}, key)
    attributes = {
        name: attribute_text(value)
        for name, value in _attributes(envelope).items()
        if name != "datacontenttype"
    }
    return Outgoing(envelope.id, _data_bytes(envelope), envelope.datacontenttype, attributes, key)


class SinkClient:
    """One open client of a broker connection, kept by sink_clients.py between publishes.
    `shared` clients may be used by several threads at once (librdkafka, paho); the others
    are used by one thread at a time (pika, nats-py's event loop)."""

    shared: ClassVar[bool] = False

    def usable(self) -> bool:
        """Cheap: whether the client still looks connected (checked before each use)."""
        return True

    def send(self, message: Outgoing, target: dict[str, Any], *, timeout: float) -> dict:
        """Publish and wait until the broker has the message; returns a small JSON receipt.
        Raises SinkError."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the connection; never raises."""


class Sink:
    """One connection's publisher. Subclasses set `kind`, `target_names`, and implement
    `open` (a SinkClient); `check_target` may be extended for typed options."""

    kind: ClassVar[str]
    target_names: ClassVar[tuple[str, ...]] = ()
    required_target: ClassVar[tuple[str, ...]] = ()
    modes: ClassVar[tuple[str, ...]] = MODES

    def __init__(self, config: ConnectionConfig):
        self.config = config

    @classmethod
    def check_target(cls, target: dict[str, Any], *, mode: str) -> dict[str, Any]:
        """The target, checked; raises InvalidConnection saying what is wrong."""
        if not isinstance(target, dict):
            raise InvalidConnection("target is a JSON object")
        unknown = sorted(set(target) - set(cls.target_names))
        if unknown:
            raise InvalidConnection(
                f"unknown target option {unknown[0]!r} for {cls.kind} "
                f"(known: {', '.join(cls.target_names) or 'none'})"
            )
        missing = [n for n in cls.required_target if not target.get(n)]
        if missing:
            raise InvalidConnection(f"publishing to {cls.kind} needs target.{missing[0]}")
        for name, value in target.items():
            if isinstance(value, str) and not value.strip():
                raise InvalidConnection(f"target.{name} rendered to an empty string")
        if mode not in cls.modes:
            raise InvalidConnection(
                f"{cls.kind} sends CloudEvents in {' or '.join(cls.modes)} mode, not {mode!r}"
            )
        return target

    @classmethod
    def check_mode(cls, options: dict[str, Any], *, mode: str) -> None:
        """Raises InvalidConnection when a connection with these options cannot carry
        `mode` (MQTT 3.1.1 has no binary mode)."""

    def client_key(self, *, timeout: float) -> tuple:
        """What tells one kept client from another: (kind, connection name, its settings,
        …): an edited connection gets a new client. Extend when a client is bound to more."""
        settings = json.dumps(self.config.fingerprint(), sort_keys=True, default=str)
        return (self.kind, self.config.name, settings)

    def open(self, *, timeout: float) -> SinkClient:
        """A connected client, within `timeout`. Raises SinkError."""
        raise NotImplementedError

    def publish(self, message: Outgoing, target: dict[str, Any], *, timeout: float) -> dict:
        """Publish on this process's client of the connection and wait until the broker has
        the message; returns a small JSON receipt. Raises SinkError."""
        return sink_clients.publish(self, message, target, timeout=timeout)
