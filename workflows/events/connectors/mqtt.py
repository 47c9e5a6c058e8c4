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

import os
import queue
import secrets
import threading
import time
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from workflows.events.connectors.base import Connector, InvalidConnection, Message, consumes
from workflows.events.connectors.registry import register, register_sink
from workflows.events.connectors.sink import Outgoing, Sink, SinkClient, SinkError, unreachable

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

    @classmethod
    def check_mode(cls, options, *, mode: str) -> None:
        if mode == "binary" and PROTOCOLS[str(options.get("protocol", "5"))] != mqtt.MQTTv5:
            raise InvalidConnection(
                'MQTT 3.1.1 carries CloudEvents in structured mode only (set "mode": "structured")'
            )

    def publish(self, message: Outgoing, target, *, timeout: float) -> dict:
        try:  # before any connection: the configuration's to fix
            self.check_mode(self.config.options, mode="binary" if message.attributes else "")
        except InvalidConnection as exc:
            raise SinkError(f"mqtt: {exc}", code="mqtt.mode", retryable=False) from exc
        return super().publish(message, target, timeout=timeout)

    def open(self, *, timeout: float) -> MqttClient:
        try:
            return MqttClient(self.config, timeout=timeout)
        except (OSError, ConnectionError, ValueError) as exc:
            raise unreachable("mqtt", exc) from exc


class MqttClient(SinkClient):
    """A clean session with paho's network thread running: it answers the keepalive pings
    between publishes, and `on_disconnect` marks the client unusable. Thread-safe: paho's
    publish takes its own locks, and each publish waits for its own message id."""

    shared = True

    def __init__(self, config, *, timeout: float):
        self.version = PROTOCOLS[str(config.options.get("protocol", "5"))]
        address = urlsplit(config.url)
        connected = threading.Event()
        self.gone = ""  # why the broker connection ended, once it has
        self.pubacks: dict[int, object] = {}  # message id -> the PUBACK's reason code
        self.lock = threading.Lock()
        outcome: dict = {}

        def on_connect(_client, _userdata, _flags, reason_code, _properties):
            outcome["connect"] = reason_code
            connected.set()

        def on_disconnect(_client, _userdata, _flags, reason_code, _properties):
            self.gone = str(reason_code)
            connected.set()

        def on_publish(_client, _userdata, mid, reason_code, _properties):
            with self.lock:
                self.pubacks[mid] = reason_code

        # One id per kept client: a broker drops an older session that has the same id.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"signalbox-pub-{os.getpid()}-{secrets.token_hex(4)}",
            protocol=self.version,
            reconnect_on_failure=False,
        )
        if config.username:
            self.client.username_pw_set(config.username, config.password or None)
        self.client.on_connect, self.client.on_disconnect = on_connect, on_disconnect
        self.client.on_publish = on_publish
        self.client.connect(address.hostname, address.port or 1883, keepalive=30)
        self.client.loop_start()
        try:
            if not connected.wait(timeout) or "connect" not in outcome:
                raise ConnectionError("the MQTT broker did not answer CONNECT")
            if outcome["connect"].is_failure:
                raise SinkError(
                    f"mqtt: the broker refused the connection: {outcome['connect']}",
                    code="mqtt.refused",
                    retryable=False,
                )
        except BaseException:
            self.close()
            raise

    def usable(self) -> bool:
        return not self.gone and self.client.is_connected()

    def send(self, message: Outgoing, target, *, timeout: float) -> dict:
        topic, qos = str(target["topic"]), target.get("qos", 1)
        properties = None
        if self.version == mqtt.MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)
            if message.content_type:
                properties.ContentType = message.content_type
            for name, value in message.attributes.items():
                properties.UserProperty = (name, value)
        try:
            info = self.client.publish(
                topic,
                message.body,
                qos=qos,
                retain=target.get("retain", False),
                properties=properties,
            )
            deadline = time.monotonic() + timeout
            # In slices, so a connection lost meanwhile ends the wait at once.
            while not info.is_published() and not self.gone and time.monotonic() < deadline:
                info.wait_for_publish(min(0.2, max(deadline - time.monotonic(), 0.01)))
            if not info.is_published():
                raise ConnectionError(
                    f"no PUBACK within {timeout:g}s"
                    + (f" (disconnected: {self.gone})" if self.gone else "")
                )
        except (OSError, ConnectionError, ValueError, RuntimeError) as exc:
            raise unreachable("mqtt", exc) from exc
        with self.lock:
            puback = self.pubacks.pop(info.mid, None)
        if puback is not None and puback.is_failure:
            raise SinkError(
                f"mqtt: the broker refused the message: {puback}",
                code="mqtt.refused",
                retryable=False,
            )
        return {"topic": topic, "qos": qos, "mid": info.mid}

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
