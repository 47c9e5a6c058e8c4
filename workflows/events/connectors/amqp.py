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

from .base import Connector, InvalidConnection, Message
from .registry import register

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
        params = pika.URLParameters(self.config.url)
        if self.config.username:
            params.credentials = pika.PlainCredentials(self.config.username, self.config.password)
        params.socket_timeout = 5
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
