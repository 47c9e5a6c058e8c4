"""The contract every connector keeps, run against each real local broker: delivery in
both CloudEvents content modes, redelivery after a crash between commit and ack without a
duplicate event, poison messages to the dead-letter queue, per-key order, and reconnecting
after the server goes away (simulated by a proxy: the brokers are shared system services).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
from django.conf import settings

from tests.chaos.proxy import FaultProxy
from tests.connector_brokers import BROKERS, nats_ack_pending
from tests.stack import database_url_for
from tests.waiting import stacks_on_timeout, wait_until
from workflows.events.connectors import registry
from workflows.events.connectors.base import ConnectionConfig
from workflows.events.connectors.intake import ingest_batch
from workflows.events.connectors.runner import ConnectorThread
from workflows.events.models import Connection, DeadLetter, Event
from workflows.events.schemas import register_schema

pytestmark = pytest.mark.django_db(transaction=True)

KINDS = sorted(BROKERS)
CE_JSON = "application/cloudevents+json"


@pytest.fixture(params=KINDS)
def broker(request):
    made = BROKERS[request.param]()
    yield made
    made.cleanup()


def config_for(broker, *, port: int | None = None) -> ConnectionConfig:
    return ConnectionConfig(
        name=f"t-{broker.uid}",
        kind=broker.kind,
        url=broker.url(port),
        options=broker.options(),
        default_type="com.example.reading",
    )


def connected(broker):
    connector = registry.get(broker.kind)(config_for(broker))
    connector.connect()
    return connector


def receive(connector, count: int, *, timeout: float = 60.0) -> list:
    # Generous: a Kafka consumer joining its group waits out the rebalance (and, after a
    # crash, the dead member's session timeout) before the first message.
    got: list = []
    wait_until(
        lambda: (
            got.extend(connector.receive(timeout=0.5, max_messages=count - len(got)))
            or len(got) >= count
        ),
        timeout=timeout,
        message=f"{count} message(s)",
    )
    return got


def ingest(broker, messages) -> list[str]:
    return ingest_batch(
        messages, kind=broker.kind, connection=f"t-{broker.uid}", default_type="com.example.reading"
    )


def structured(ce_id: str, **data) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "type": "com.example.reading",
            "source": "/devices/thermo-1",
            "id": ce_id,
            "data": data,
        }
    ).encode()


def test_a_structured_event_is_stored_with_its_key_as_partition_key(broker):
    connector = connected(broker)
    try:
        key = broker.key("thermo-1")
        broker.publish(key, structured("r-1", celsius=21.5), content_type=CE_JSON)
        [message] = receive(connector, 1)
        assert ingest(broker, [message]) == ["ingested"]
        connector.ack([message])
    finally:
        connector.close()
    event = Event.objects.get(source="/devices/thermo-1", ce_id="r-1")
    assert event.data == {"celsius": 21.5}
    assert event.channel == "connector"
    assert event.extensions["partitionkey"] == key


def test_a_binary_mode_message_takes_its_attributes_from_headers(broker):
    connector = connected(broker)
    try:
        key = broker.key("thermo-2")
        broker.publish(
            key,
            b'{"celsius": 19}',
            content_type="application/json",
            attributes={
                "specversion": "1.0",
                "type": "com.example.reading",
                "id": "b-1",
                "source": "/devices/thermo-2",
                "site": "lyon",
            },
        )
        [message] = receive(connector, 1)
        assert ingest(broker, [message]) == ["ingested"]
        connector.ack([message])
    finally:
        connector.close()
    event = Event.objects.get(source="/devices/thermo-2", ce_id="b-1")
    assert event.data == {"celsius": 19}
    assert event.datacontenttype == "application/json"
    assert event.extensions["site"] == "lyon"


def test_redelivery_after_a_crash_between_commit_and_ack_stores_no_duplicate(broker):
    config = config_for(broker)
    # The first reader is a real process, killed (SIGKILL) after its commit, before its ack.
    env = dict(
        os.environ,
        DATABASE_URL=database_url_for(settings.DATABASES["default"]["NAME"]),
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
    )
    env.pop("SIGNALBOX_TEST_DB_NAME", None)
    crashing = subprocess.Popen(
        [sys.executable, "-m", "tests.connector_crash", json.dumps(asdict(config))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert crashing.stdout.readline().strip() == "connected"
        broker.publish(broker.key("a"), b'{"n": 1}', content_type="application/json")
        output, _ = crashing.communicate(timeout=60)
    finally:
        if crashing.poll() is None:
            crashing.kill()
    assert crashing.returncode == -signal.SIGKILL, output
    assert "committed ['ingested']" in output
    assert Event.objects.filter(type="com.example.reading").count() == 1

    second = connected(broker)
    try:
        [again] = receive(second, 1)  # the broker sends it again: it was never acknowledged
        assert again.body == b'{"n": 1}'
        assert ingest(broker, [again]) == ["duplicate"]
        second.ack([again])
    finally:
        second.close()
    assert Event.objects.filter(type="com.example.reading").count() == 1


def test_a_poison_message_goes_to_the_dead_letter_queue_and_is_acknowledged(broker):
    connector = connected(broker)
    try:
        broker.publish(broker.key("p"), b"{not json", content_type=CE_JSON)
        [poison] = receive(connector, 1)
        assert ingest(broker, [poison]) == ["quarantined"]
        connector.ack([poison])
        if broker.kind == "nats":
            assert nats_ack_pending(broker, f"signalbox-t-{broker.uid}") == 0
    finally:
        connector.close()
    letter = DeadLetter.objects.get(payload__connection=f"t-{broker.uid}")
    assert "invalid CloudEvent" in letter.reason
    assert letter.payload["body"] == "{not json"

    # Acknowledged: a new reader gets the next message, not the poison again.
    again = connected(broker)
    try:
        broker.publish(broker.key("p"), structured("after-poison"), content_type=CE_JSON)
        [message] = receive(again, 1)
        assert b"after-poison" in message.body
    finally:
        again.close()


def test_in_one_batch_only_the_bad_messages_are_dead_lettered(broker):
    register_schema(
        event_type="com.example.reading",
        schema={"type": "object", "required": ["celsius"]},
    )
    connector = connected(broker)
    key = broker.key("mixed")
    try:
        broker.publish(key, json.dumps({"celsius": 1}).encode(), content_type="application/json")
        broker.publish(key, json.dumps({"kelvin": 2}).encode(), content_type="application/json")
        broker.publish(key, b"[1,", content_type="application/json")
        broker.publish(key, json.dumps({"celsius": 3}).encode(), content_type="application/json")
        messages = receive(connector, 4)
        assert ingest(broker, messages) == ["ingested", "quarantined", "quarantined", "ingested"]
        # Text PostgreSQL cannot hold (a NUL) is refused before the INSERT, alone.
        nul = json.dumps({"celsius": 4, "note": "a\u0000b"}).encode()
        broker.publish(key, nul, content_type="application/json")
        broker.publish(key, json.dumps({"celsius": 5}).encode(), content_type="application/json")
        more = receive(connector, 2)
        assert ingest(broker, more) == ["quarantined", "ingested"]
        connector.ack(messages + more)
    finally:
        connector.close()
    stored = [e.data["celsius"] for e in Event.objects.filter(type="com.example.reading")]
    assert sorted(stored) == [1, 3, 5]
    letters = DeadLetter.objects.filter(payload__connection=f"t-{broker.uid}")
    assert sorted(d.reason.split(":")[0] for d in letters) == [
        "data does not match its schema",
        "invalid CloudEvent",
        "invalid CloudEvent",
    ]


def test_events_of_one_key_keep_their_order(broker):
    connector = connected(broker)
    keys = [broker.key("left"), broker.key("right")]
    try:
        for n in range(15):
            for key in keys:
                broker.publish(key, json.dumps({"n": n}).encode(), content_type="application/json")
        # Batch by batch, as the runner does: MQTT brokers hold back messages beyond a
        # client's in-flight window (20 on Mosquitto) until earlier ones are acknowledged.
        outcomes: list[str] = []

        def pump() -> bool:
            batch = connector.receive(timeout=0.5, max_messages=30)
            outcomes.extend(ingest(broker, batch))
            connector.ack(batch)
            return len(outcomes) >= 30

        wait_until(pump, message="30 messages")
        assert set(outcomes) == {"ingested"}
    finally:
        connector.close()
    for key in keys:
        seen = [
            e.data["n"] for e in Event.objects.filter(extensions__partitionkey=key).order_by("id")
        ]
        assert seen == list(range(15)), key


@pytest.fixture
def reachable(broker):
    """(the broker, a fault proxy in front of it, the port to reach it through). A Kafka
    client connects to the address its server advertises, not the one it was given: so
    for Kafka a private server advertises the proxy's port, and the test's own producer
    goes through the proxy too (its messages wait in the producer while it is down)."""
    if broker.kind != "kafka":
        proxy = FaultProxy(broker.port, name=broker.kind)
        yield broker, proxy, proxy.start()
        proxy.stop()
        return
    from orchestrator.embedded_redis import free_port
    from tests import kafka_server
    from tests.connector_brokers import KafkaBroker

    backend = free_port()
    proxy = FaultProxy(backend, name="kafka")
    port = proxy.start()
    server = kafka_server.start(port=backend, advertised_port=port)
    try:
        wait_until(lambda: kafka_server.answers(backend), message="a private Tansu")
        private = KafkaBroker(port=port)
        private.wait = False
        yield private, proxy, port
    finally:
        proxy.stop()
        server.kill()
        server.wait(10)


def test_the_connector_reconnects_after_its_server_goes_away(reachable):
    broker, proxy, port = reachable
    config = config_for(broker, port=port)
    Connection.objects.create(
        name=config.name,
        kind=config.kind,
        url=config.url,
        options=config.options,
        enabled=False,  # read by the thread below only, not by a bus consumer of the stack
    )
    thread = ConnectorThread(config, owner="contract-test")
    thread.backoff.cap = 1.0
    thread.start()
    state = lambda: Connection.objects.get(name=config.name).state  # noqa: E731
    try:
        with stacks_on_timeout():
            wait_until(lambda: state() == "connected", message="connected")
            broker.publish(broker.key("r"), structured("before"), content_type=CE_JSON)
            wait_until(
                lambda: Event.objects.filter(ce_id="before").exists(),
                timeout=60,
                message="the event sent before the outage",
            )

            proxy.down()
            down = wait_until(
                lambda: Connection.objects.filter(name=config.name, state="reconnecting").first(),
                timeout=60,
                message="the reader to notice the outage",
            )
            assert down.last_error
            broker.publish(broker.key("r"), structured("during"), content_type=CE_JSON)

            proxy.up()
            broker.settle()
            wait_until(
                lambda: Event.objects.filter(ce_id="during").exists(),
                timeout=90,
                message=f"the event sent during the outage (reader {state()})",
            )
        assert state() == "connected"
    finally:
        thread.stop()
        thread.join(15)
    assert not thread.is_alive(), "the reader did not stop"
    assert Event.objects.filter(ce_id__in=["before", "during"]).count() == 2


def test_an_mqtt_3_1_1_device_sends_structured_events_to_a_wildcard_subscription():
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.connector_brokers import MqttBroker

    broker = MqttBroker()
    options = {**broker.options(), "protocol": "3.1.1", "topics": [f"{broker.prefix}/+/reading"]}
    config = ConnectionConfig(
        name=f"t-{broker.uid}", kind="mqtt", url=broker.url(), options=options
    )
    connector = registry.get("mqtt")(config)
    connector.connect()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    try:
        # The status first: were it delivered, it would come before the reading.
        for topic, ce_id in (("thermo-9/status", "d-2"), ("thermo-9/reading", "d-1")):
            info = device.publish(f"{broker.prefix}/{topic}", structured(ce_id), qos=1)
            info.wait_for_publish(timeout=10)
        [message] = receive(connector, 1)
        assert message.key == f"{broker.prefix}/thermo-9/reading"  # status matches no filter
        assert ingest(broker, [message]) == ["ingested"]
        connector.ack([message])
    finally:
        device.disconnect()
        device.loop_stop()
        connector.close()
        broker.cleanup()
    event = Event.objects.get(ce_id="d-1")
    assert event.extensions["partitionkey"] == f"{broker.prefix}/thermo-9/reading"
