"""RabbitMQ / AMQP 0-9-1 source (pika): a durable queue, optionally bound to an exchange,
consumed with manual acks sent only after the events are committed.

CloudEvents AMQP binding: structured mode when the content type is
`application/cloudevents+json`; binary mode otherwise, with the attributes in application
headers prefixed `cloudEvents_` (or `cloudEvents:`, the older spelling, or `ce-`/`ce_`),
`content_type` as `datacontenttype` and the body as the data. The routing key is the
partition key; the `message_id` property is the id of an event that names none.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pika

from workflows.events.connectors.base import Connector, InvalidConnection, Message
from workflows.events.connectors.registry import register, register_sink
from workflows.events.connectors.sink import Outgoing, Sink, SinkClient, SinkError, unreachable

# pika logs every connection step at INFO: keep the logs to what matters.
logging.getLogger("pika").setLevel(logging.WARNING)

PREFIXES = ("cloudEvents_", "cloudEvents:", "ce-", "ce_")


def attributes_from_headers(headers: dict[str, Any] | None) -> dict[str, str]:
    attributes = {}
    for name, value in (headers or {}).items():
        for prefix in PREFIXES:
            if name.lower().startswith(prefix.lower()) and len(name) > len(prefix):
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "backslashreplace")
                attributes[name[len(prefix) :].lower()] = str(value)
                break
    return attributes


def parameters(config, *, timeout: float) -> pika.URLParameters:
    params = pika.URLParameters(config.url)
    if config.username:
        params.credentials = pika.PlainCredentials(config.username, config.password)
    params.socket_timeout = timeout
    params.connection_attempts = 1
    return params


@register
class AmqpConnector(Connector):
    kind = "amqp"
    scheme = "amqp"
    option_names = ("queue", "exchange", "binding_keys", "declare", "prefetch")
    required_options = ("queue",)

    @classmethod
    def check_options(cls, options):
        options = super().check_options(options)
        keys = options.get("binding_keys", ["#"])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidConnection("binding_keys is a list of routing key patterns")
        prefetch = options.get("prefetch", 200)
        if not isinstance(prefetch, int) or not 1 <= prefetch <= 65535:
            raise InvalidConnection("prefetch is a whole number from 1 to 65535")
        return options

    def connect(self) -> None:
        params = parameters(self.config, timeout=5)
        params.blocked_connection_timeout = 30
        params.heartbeat = 30
        options = self.config.options
        self.buffer: list[Message] = []
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        queue = options["queue"]
        if options.get("declare", True):
            self.channel.queue_declare(queue, durable=True)
        if options.get("exchange"):
            for binding in options.get("binding_keys", ["#"]):
                self.channel.queue_bind(queue, options["exchange"], routing_key=binding)
        self.channel.basic_qos(prefetch_count=options.get("prefetch", 200))
        self.channel.basic_consume(queue, self._on_message, auto_ack=False)

    def _on_message(self, _channel, method, properties, body: bytes) -> None:
        self.buffer.append(
            Message(
                body=body,
                content_type=properties.content_type or "",
                attributes=attributes_from_headers(properties.headers),
                key=method.routing_key,
                fallback_id=properties.message_id or "",
                redelivered=bool(method.redelivered),
                token=method.delivery_tag,
            )
        )

    def receive(self, *, timeout: float, max_messages: int) -> list[Message]:
        if not self.buffer:
            self.connection.process_data_events(time_limit=timeout)
        if self.buffer:  # gather what else has already arrived, without waiting
            self.connection.process_data_events(time_limit=0)
        batch, self.buffer = self.buffer[:max_messages], self.buffer[max_messages:]
        return batch

    def ack(self, messages: list[Message]) -> None:
        if messages:  # delivered in order on one channel: one ack covers the batch
            self.channel.basic_ack(max(m.token for m in messages), multiple=True)

    def close(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None and connection.is_open:
            # Already broken: the broker requeues what was unacked anyway.
            with contextlib.suppress(Exception):
                connection.close()


@register_sink
class AmqpSink(Sink):
    """Publishes persistent messages with publisher confirms on, `mandatory` by default: the
    step succeeds once the broker has confirmed the message (routed to a queue, and written
    to disk for a durable one); a message no queue takes fails it (`amqp.unroutable`)
    rather than vanish. The CloudEvent id is the `message_id` property; binary mode puts the
    attributes in `cloudEvents_` application headers (AMQP binding 1.0.2)."""

    kind = "amqp"
    target_names = ("exchange", "routing_key", "mandatory")

    @classmethod
    def check_target(cls, target, *, mode):
        target = super().check_target(target, mode=mode)
        if not isinstance(target.get("mandatory", True), bool):
            raise InvalidConnection("target.mandatory is true or false")
        return target

    def open(self, *, timeout: float) -> AmqpClient:
        with amqp_errors():
            return AmqpClient(self.config, timeout=timeout)


@contextlib.contextmanager
def amqp_errors(exchange: str = "", routing_key: str = ""):
    """pika's exceptions as the sink's coded failures."""
    try:
        yield
    except pika.exceptions.UnroutableError as exc:
        raise SinkError(
            f"amqp: no queue takes routing key {routing_key!r} on exchange "
            f"{exchange or '(default)'!r}: the broker returned the message",
            code="amqp.unroutable",
            retryable=False,
        ) from exc
    except pika.exceptions.NackError as exc:
        raise SinkError(
            "amqp: the broker refused the message (basic.nack)",
            code="amqp.nack",
            retryable=True,
        ) from exc
    except pika.exceptions.ChannelClosedByBroker as exc:
        # 404 no such exchange, 403 access refused, 406 precondition failed: the
        # configuration's to fix, not a moment's trouble.
        raise SinkError(
            f"amqp: the broker closed the channel: {exc.reply_code} {exc.reply_text}",
            code=f"amqp.{exc.reply_code}",
            retryable=False,
        ) from exc
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise SinkError(
            f"amqp: the broker refused the credentials: {exc}",
            code="amqp.auth",
            retryable=False,
        ) from exc
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise unreachable("amqp", exc) from exc


class AmqpClient(SinkClient):
    """A connection with one channel in confirm mode. pika answers heartbeats only while
    driven: `usable` drives it (and notices a connection the broker closed meanwhile)."""

    def __init__(self, config, *, timeout: float):
        params = parameters(config, timeout=timeout)
        params.blocked_connection_timeout = timeout
        self.connection = pika.BlockingConnection(params)
        try:
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
        except BaseException:
            self.close()
            raise

    def usable(self) -> bool:
        if not (self.connection.is_open and self.channel.is_open):
            return False
        self.connection.process_data_events(time_limit=0)  # raises when the socket is gone
        return self.connection.is_open and self.channel.is_open

    def send(self, message: Outgoing, target, *, timeout: float) -> dict:
        exchange = str(target.get("exchange", ""))
        # The routing key defaults to the partition key (the natural key a Signalbox AMQP
        # source turns back into one), else the event type.
        routing_key = str(
            target.get("routing_key") or message.key or message.attributes.get("type", "")
        )
        headers = {f"cloudEvents_{name}": value for name, value in message.attributes.items()}
        properties = pika.BasicProperties(
            content_type=message.content_type or None,
            message_id=message.id,
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=headers or None,
        )
        with amqp_errors(exchange, routing_key):
            self.channel.basic_publish(
                exchange,
                routing_key,
                message.body,
                properties,
                mandatory=target.get("mandatory", True),
            )
        return {"exchange": exchange, "routing_key": routing_key, "confirmed": True}

    def close(self) -> None:
        if self.connection.is_open:
            with contextlib.suppress(Exception):
                self.connection.close()
