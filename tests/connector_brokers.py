"""The local brokers the connector contract suite runs against, one adapter per kind:
each makes a private place to publish to (an exchange + queue, a stream, a topic tree),
publishes messages the way a producer would, and removes what it made.

The servers are the machine's own (RabbitMQ :5672, NATS with JetStream :4222, Mosquitto
:1883); `.ci/run` starts them. A server that does not answer fails the test, never skips.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import paho.mqtt.client as mqtt
import pika
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

AMQP_PORT, NATS_PORT, MQTT_PORT = 5672, 4222, 1883


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

    def cleanup(self):
        self.client.disconnect()
        self.client.loop_stop()
        # End the connector's persistent session: the broker is shared, and would keep it
        # (and queue messages for it) for a week.
        wiper = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sbtest-{self.uid}", protocol=mqtt.MQTTv5
        )
        wiper.connect("127.0.0.1", self.port, clean_start=True)
        wiper.disconnect()


BROKERS = {"amqp": AmqpBroker, "nats": NatsBroker, "mqtt": MqttBroker}


def nats_ack_pending(broker: NatsBroker, durable: str) -> int:
    """Messages the durable consumer delivered and has not had acknowledged."""
    info = broker.loop.run_until_complete(broker.js.consumer_info(broker.stream, durable))
    return info.num_ack_pending
