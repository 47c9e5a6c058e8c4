"""MQTT 3.1.1 and 5 source (paho-mqtt): QoS 1 subscriptions (wildcards allowed) on a
persistent session, each PUBACK sent only after the event is committed, so the broker
sends again whatever was not acknowledged when the connector comes back.

CloudEvents MQTT binding: structured mode (the payload is a CloudEvent; on MQTT 5 the
content type is `application/cloudevents+json`); binary mode on MQTT 5 only, with the
attributes as user properties named after them and the Content Type property as
`datacontenttype`. The topic is the partition key. MQTT names no message id: an event
should carry its own `id` (a digest of the message is used otherwise, so identical
messages on one topic are one event).
"""

from __future__ import annotations

import queue
import threading
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from workflows.events.connectors.base import Connector, InvalidConnection, Message, consumes
from workflows.events.connectors.registry import register, register_sink
from workflows.events.connectors.sink import Outgoing, Sink, SinkError, unreachable

PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
SESSION_EXPIRY_SECONDS = 7 * 24 * 3600  # MQTT 5: keep the session (and its queue) a week


@register
class MqttConnector(Connector):
    kind = "mqtt"
    scheme = "mqtt"
    option_names = ("topics", "protocol", "client_id")
    required_options = ("topics",)

    @classmethod
    def check_options(cls, options):
        options = super().check_options(options)
        topics = options.get("topics", [])
        if consumes(options) and (
            not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics)
        ):
            raise InvalidConnection("topics is a list of topic filters (+ and # allowed)")
        if str(options.get("protocol", "5")) not in PROTOCOLS:
            raise InvalidConnection("protocol is 3.1.1 or 5")
        return options

    def connect(self) -> None:
        options = self.config.options
        address = urlsplit(self.config.url)
        self.version = PROTOCOLS[str(options.get("protocol", "5"))]
        self.inbox: queue.Queue = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.failure: str = ""
        client_id = options.get("client_id") or f"signalbox-{self.config.name}"
        kwargs = {"clean_session": False} if self.version == mqtt.MQTTv311 else {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.version,
            manual_ack=True,  # PUBACK only when `ack` says the event is committed
            reconnect_on_failure=False,  # the connector's own back-off reconnects
            **kwargs,
        )
        if self.config.username:
            self.client.username_pw_set(self.config.username, self.config.password or None)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        connect_kwargs = {}
        if self.version == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            connect_kwargs = {"clean_start": False, "properties": properties}
        self.client.connect(address.hostname, address.port or 1883, keepalive=30, **connect_kwargs)
        self.client.loop_start()
        if not self.connected.wait(10) or self.failure:
            raise ConnectionError(self.failure or "the MQTT broker did not answer CONNECT")
        # Reading starts once the broker has granted the subscriptions (a first session has
        # none before; a message published earlier would not be kept for it).
        if not self.subscribed.wait(10) or self.failure:
            raise ConnectionError(self.failure or "the MQTT broker did not answer SUBSCRIBE")

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            self.failure = f"subscription refused: {', '.join(refused)}"
        self.subscribed.set()

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self.failure = f"connection refused: {reason_code}"
        else:
            client.subscribe([(topic, 1) for topic in self.config.options["topics"]])
        self.connected.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.failure = f"disconnected: {reason_code}"
        self.connected.set()
        self.subscribed.set()
        self.inbox.put(None)  # wake `receive`

    def _on_message(self, _client, _userdata, msg) -> None:
        attributes, content_type = {}, ""
        properties = getattr(msg, "properties", None)
        if self.version == mqtt.MQTTv5 and properties is not None:
            content_type = getattr(properties, "ContentType", "") or ""
            attributes = {k.lower(): v for k, v in getattr(properties, "UserProperty", []) or []}
        self.inbox.put(
            Message(
                body=msg.payload,
                content_type=content_type,
                attributes=attributes,
                key=msg.topic,
                fallback_id="",
                redelivered=bool(msg.dup),
                token=(msg.mid, msg.qos),
            )
        )

    def receive(self, *, timeout: float, max_messages: int) -> list[Message]:
        batch = []
        try:
            item = self.inbox.get(timeout=timeout)
            while True:
                if item is None:
                    raise ConnectionError(f"MQTT {self.failure}")
                batch.append(item)
                if len(batch) >= max_messages:
                    break
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        return batch

    def ack(self, messages: list[Message]) -> None:
        for message in messages:
            mid, qos = message.token
            if qos > 0:
                self.client.ack(mid, qos)

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is None:
            return
        try:
            client.disconnect()
        finally:
            client.loop_stop()


@register_sink
class MqttSink(Sink):
    """Publishes with QoS 1 (or 0 when asked) and waits for the PUBACK. MQTT 5 sends binary
    mode (attributes as user properties, the Content Type property as `datacontenttype`) or
    structured mode; MQTT 3.1.1 has no properties, so structured mode only (MQTT binding
    1.0.2). MQTT has no message id a broker dedupes on: a retried step may deliver twice,
    and a consumer dedupes on the CloudEvent id (a Signalbox source does)."""

    kind = "mqtt"
    target_names = ("topic", "qos", "retain")
    required_target = ("topic",)

    @classmethod
    def check_target(cls, target, *, mode):
        target = super().check_target(target, mode=mode)
        topic = str(target["topic"])
        if "+" in topic or "#" in topic:
            raise InvalidConnection("target.topic is a topic name: wildcards only subscribe")
        if target.get("qos", 1) not in (0, 1):
            raise InvalidConnection("target.qos is 1 (at least once, the default) or 0")
        if not isinstance(target.get("retain", False), bool):
            raise InvalidConnection("target.retain is true or false")
        return target

    def publish(self, message: Outgoing, target, *, timeout: float) -> dict:
        version = PROTOCOLS[str(self.config.options.get("protocol", "5"))]
        if version != mqtt.MQTTv5 and message.attributes:
            raise SinkError(
                "mqtt: MQTT 3.1.1 carries CloudEvents in structured mode only "
                '(set "mode": "structured" on the step)',
                code="mqtt.mode",
                retryable=False,
            )
        topic, qos = str(target["topic"]), target.get("qos", 1)
        address = urlsplit(self.config.url)
        connected, published = threading.Event(), threading.Event()
        outcome: dict = {}

        def on_connect(_client, _userdata, _flags, reason_code, _properties):
            outcome["connect"] = reason_code
            connected.set()

        def on_disconnect(_client, _userdata, _flags, reason_code, _properties):
            outcome.setdefault("disconnect", reason_code)
            connected.set()
            published.set()

        def on_publish(_client, _userdata, _mid, reason_code, _properties):
            outcome["puback"] = reason_code
            published.set()

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"signalbox-pub-{message.id}"[:64],
            protocol=version,
            reconnect_on_failure=False,
        )
        if self.config.username:
            client.username_pw_set(self.config.username, self.config.password or None)
        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_publish = on_publish
        properties = None
        if version == mqtt.MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)
            if message.content_type:
                properties.ContentType = message.content_type
            for name, value in message.attributes.items():
                properties.UserProperty = (name, value)
        try:
            client.connect(address.hostname, address.port or 1883, keepalive=30)
            client.loop_start()
            try:
                if not connected.wait(timeout) or "connect" not in outcome:
                    raise ConnectionError("the MQTT broker did not answer CONNECT")
                if outcome["connect"].is_failure:
                    raise SinkError(
                        f"mqtt: the broker refused the connection: {outcome['connect']}",
                        code="mqtt.refused",
                        retryable=False,
                    )
                info = client.publish(
                    topic,
                    message.body,
                    qos=qos,
                    retain=target.get("retain", False),
                    properties=properties,
                )
                if not published.wait(timeout) or "disconnect" in outcome:
                    raise ConnectionError(
                        f"no PUBACK within {timeout:g}s"
                        + (
                            f" (disconnected: {outcome['disconnect']})"
                            if "disconnect" in outcome
                            else ""
                        )
                    )
                puback = outcome.get("puback")
                if puback is not None and puback.is_failure:
                    raise SinkError(
                        f"mqtt: the broker refused the message: {puback}",
                        code="mqtt.refused",
                        retryable=False,
                    )
            finally:
                client.disconnect()
                client.loop_stop()
        except SinkError:
            raise
        except (OSError, ConnectionError, ValueError) as exc:
            raise unreachable("mqtt", exc) from exc
        return {"topic": topic, "qos": qos, "mid": info.mid}
