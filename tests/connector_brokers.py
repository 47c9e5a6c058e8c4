"""The local brokers the connector contract suite runs against, one adapter per kind:
each makes a private place to publish to (an exchange + queue, a stream, a topic tree),
publishes messages the way a producer would, and removes what it made.

The servers are the machine's own (RabbitMQ :5672, NATS with JetStream :4222, Mosquitto
:1883) and Tansu, a Kafka-protocol broker, on :9092 (tests/kafka_server.py); `.ci/run`
starts them. A server that does not answer fails the test, never skips.

For the sinks, each adapter also names a `sink_target` (where the `publish` step sends a
key's messages) and listens there like any consumer on that broker would (`listen`, then
`received`), returning the raw message: body, content type and headers as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import uuid
from dataclasses import dataclass, field

import nats
import paho.mqtt.client as mqtt
import pika
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.kafka_server import KAFKA_PORT
from tests.waiting import wait_until

AMQP_PORT, NATS_PORT, MQTT_PORT = 5672, 4222, 1883


@dataclass
class Raw:
    """A message as a consumer on the broker receives it."""

    key: str
    body: bytes
    content_type: str = ""
    headers: dict = field(default_factory=dict)  # names as sent (AMQP headers, NATS/Kafka
    # headers, MQTT 5 user properties)
    message_id: str = ""  # AMQP message_id, NATS Nats-Msg-Id


class Broker:
    kind: str
    port: int

    def __init__(self):
        self.uid = uuid.uuid4().hex[:10]

    def url(self, port: int | None = None) -> str:
        return f"{self.kind}://127.0.0.1:{port or self.port}"

    def options(self) -> dict:
        raise NotImplementedError

    def key(self, name: str) -> str:
        """The natural key (routing key, subject, topic) that messages about `name` get."""
        raise NotImplementedError

    def publish(
        self, key: str, body: bytes, *, content_type: str = "", attributes: dict | None = None
    ) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def settle(self) -> None:
        """Wait until what was published has reached the server (Kafka may hold it back)."""

    def sink_target(self, name: str) -> dict:
        raise NotImplementedError

    def listen(self) -> None:
        """Start receiving what is published to this broker's keys."""
        raise NotImplementedError

    def received(self, *, timeout: float = 20.0) -> Raw:
        raise NotImplementedError


class AmqpBroker(Broker):
    kind, port = "amqp", AMQP_PORT

    def __init__(self):
        super().__init__()
        self.exchange, self.queue = f"sbtest-{self.uid}", f"sbtest-{self.uid}"
        self.conn = pika.BlockingConnection(pika.URLParameters(self.url()))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(self.exchange, "topic")
        self.channel.confirm_delivery()  # publish returns once the broker has it

    def url(self, port=None):
        return super().url(port) + "/%2F"

    def options(self):
        return {"queue": self.queue, "exchange": self.exchange, "binding_keys": ["#"]}

    def key(self, name):
        return f"orders.{name}"

    def publish(self, key, body, *, content_type="", attributes=None):
        headers = {f"cloudEvents_{k}": v for k, v in (attributes or {}).items()}
        self.channel.basic_publish(
            self.exchange,
            key,
            body,
            pika.BasicProperties(content_type=content_type or None, headers=headers or None),
        )

    def sink_target(self, name):
        return {"exchange": self.exchange, "routing_key": self.key(name)}

    def listen(self):
        self.channel.queue_declare(self.queue, durable=True)
        self.channel.queue_bind(self.queue, self.exchange, routing_key="#")

    def received(self, *, timeout=20.0):
        def get():
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return None
            return Raw(
                key=method.routing_key,
                body=body,
                content_type=properties.content_type or "",
                headers={
                    k: v.decode() if isinstance(v, bytes) else v
                    for k, v in (properties.headers or {}).items()
                },
                message_id=properties.message_id or "",
            )

        return wait_until(get, timeout=timeout, message="a message in the AMQP queue")

    def cleanup(self):
        self.channel.queue_delete(self.queue)
        self.channel.exchange_delete(self.exchange)
        self.conn.close()


class NatsBroker(Broker):
    kind, port = "nats", NATS_PORT

    def __init__(self):
        super().__init__()
        self.stream, self.prefix = f"SBTEST_{self.uid}", f"sbtest.{self.uid}"
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(nats.connect(self.url()))
        self.js = self.nc.jetstream()
        self.loop.run_until_complete(
            self.js.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])
        )

    def options(self):
        # A short ack wait, so a message left unacknowledged comes back within the test.
        return {"stream": self.stream, "ack_wait_seconds": 1}

    def key(self, name):
        return f"{self.prefix}.{name}"

    def publish(self, key, body, *, content_type="", attributes=None):
        headers = {f"ce-{k}": v for k, v in (attributes or {}).items()}
        if content_type:
            headers["content-type"] = content_type
        self.loop.run_until_complete(self.js.publish(key, body, headers=headers or None))

    def sink_target(self, name):
        return {"subject": self.key(name)}

    def listen(self):
        self.sub = self.loop.run_until_complete(self.nc.subscribe(f"{self.prefix}.>"))
        self.loop.run_until_complete(self.nc.flush())

    def received(self, *, timeout=20.0):
        msg = self.loop.run_until_complete(self.sub.next_msg(timeout=timeout))
        headers = dict(msg.headers or {})
        return Raw(
            key=msg.subject,
            body=msg.data,
            content_type=headers.get("content-type", ""),
            headers=headers,
            message_id=headers.get("Nats-Msg-Id", ""),
        )

    def stream_messages(self) -> int:
        info = self.loop.run_until_complete(self.js.stream_info(self.stream))
        return info.state.messages

    def cleanup(self):
        self.loop.run_until_complete(self.js.delete_stream(self.stream))
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


class MqttBroker(Broker):
    kind, port = "mqtt", MQTT_PORT

    def __init__(self):
        super().__init__()
        self.prefix = f"sbtest/{self.uid}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sbtest-pub-{self.uid}", protocol=mqtt.MQTTv5
        )
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def options(self):
        return {
            "topics": [f"{self.prefix}/#"],
            "protocol": "5",
            "client_id": f"sbtest-{self.uid}",
        }

    def key(self, name):
        return f"{self.prefix}/{name}"

    def publish(self, key, body, *, content_type="", attributes=None):
        properties = Properties(PacketTypes.PUBLISH)
        if content_type:
            properties.ContentType = content_type
        for name, value in (attributes or {}).items():
            properties.UserProperty = (name, value)
        info = self.client.publish(key, body, qos=1, properties=properties)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), "Mosquitto did not acknowledge the publish"

    def sink_target(self, name):
        return {"topic": self.key(name)}

    def listen(self):
        self.inbox: queue.Queue = queue.Queue()
        subscribed = queue.Queue()
        listener = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sbtest-sub-{self.uid}", protocol=mqtt.MQTTv5
        )
        listener.on_message = lambda _c, _u, msg: self.inbox.put(msg)
        listener.on_subscribe = lambda *_args: subscribed.put(True)
        listener.on_connect = lambda c, *_args: c.subscribe(f"{self.prefix}/#", qos=1)
        listener.connect("127.0.0.1", self.port)
        listener.loop_start()
        self.listener = listener
        subscribed.get(timeout=10)

    def received(self, *, timeout=20.0):
        msg = self.inbox.get(timeout=timeout)
        properties = getattr(msg, "properties", None)
        return Raw(
            key=msg.topic,
            body=msg.payload,
            content_type=getattr(properties, "ContentType", "") or "",
            headers=dict(getattr(properties, "UserProperty", []) or []),
        )

    def cleanup(self):
        if getattr(self, "listener", None) is not None:
            self.listener.disconnect()
            self.listener.loop_stop()
        self.client.disconnect()
        self.client.loop_stop()
        # End the connector's persistent session: the broker is shared, and would keep it
        # (and queue messages for it) for a week.
        wiper = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sbtest-{self.uid}", protocol=mqtt.MQTTv5
        )
        wiper.connect("127.0.0.1", self.port, clean_start=True)
        wiper.disconnect()


class KafkaBroker(Broker):
    kind, port = "kafka", KAFKA_PORT
    partitions = 3
    wait = True  # publish returns once the broker has the message (else: `settle`)

    def __init__(self, port: int | None = None):
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        super().__init__()
        if port:
            self.port = port
        self.topic = f"sbtest-{self.uid}"
        bootstrap = {"bootstrap.servers": f"127.0.0.1:{self.port}"}
        admin = AdminClient(bootstrap)
        [created] = admin.create_topics(
            [NewTopic(self.topic, num_partitions=self.partitions, replication_factor=1)]
        ).values()
        created.result(timeout=20)
        self.producer = Producer(bootstrap | {"enable.idempotence": True})

    def options(self):
        # A short session: Tansu holds every group join for half of it (5 s at the default
        # 10 s, once or twice per test), and a crashed reader's partitions move on after it.
        return {"topics": [self.topic], "group": f"sbtest-{self.uid}", "session_timeout_seconds": 4}

    def key(self, name):
        return f"orders.{name}"

    def publish(self, key, body, *, content_type="", attributes=None):
        headers = [(f"ce_{k}", v.encode()) for k, v in (attributes or {}).items()]
        if content_type:
            headers.append(("content-type", content_type.encode()))
        self.errors: list = []
        self.producer.produce(
            self.topic,
            value=body,
            key=key,
            headers=headers,
            on_delivery=lambda e, _m: self.errors.append(e),
        )
        if self.wait:
            self.settle()

    def settle(self):
        assert self.producer.flush(30) == 0, "Kafka did not take the messages"
        assert set(getattr(self, "errors", [None])) <= {None}, self.errors

    def sink_target(self, name):
        return {"topic": self.topic}

    def listen(self):
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": f"127.0.0.1:{self.port}",
                "group.id": f"sbtest-listener-{self.uid}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])

    def received(self, *, timeout=20.0):
        def poll():
            msg = self.consumer.poll(0.5)
            if msg is None or msg.error():
                return None
            headers = {k: v.decode() for k, v in msg.headers() or []}
            return Raw(
                key=(msg.key() or b"").decode(),
                body=msg.value(),
                content_type=headers.get("content-type", ""),
                headers=headers,
            )

        return wait_until(poll, timeout=timeout, message="a Kafka message")

    def cleanup(self):
        from confluent_kafka.admin import AdminClient

        if getattr(self, "consumer", None) is not None:
            self.consumer.close()
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}"})
        for future in admin.delete_topics([self.topic]).values():
            # Memory storage: a topic it fails to delete goes with the server anyway.
            with contextlib.suppress(Exception):
                future.result(timeout=10)


BROKERS = {"amqp": AmqpBroker, "nats": NatsBroker, "mqtt": MqttBroker, "kafka": KafkaBroker}


def nats_ack_pending(broker: NatsBroker, durable: str) -> int:
    """Messages the durable consumer delivered and has not had acknowledged."""
    info = broker.loop.run_until_complete(broker.js.consumer_info(broker.stream, durable))
    return info.num_ack_pending
