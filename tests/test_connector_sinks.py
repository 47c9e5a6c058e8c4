"""The contract every sink keeps, against each real local broker: a consumer on the broker
receives exactly the CloudEvent, with the protocol binding's headers, in binary and in
structured mode; a broker that cannot be reached is a retryable, coded failure; a target
the broker refuses is not. Then the `publish` step end to end (a run publishes, retries
while the broker is down, then fails clearly), the HTTP sink, and per-key order into Kafka.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from orchestrator.embedded_redis import free_port
from tests.connector_brokers import BROKERS, Raw
from tests.factories import cloudevent, definition
from tests.http_recorder import Reply
from tests.test_spine import finished_run, publish, send
from workflows.events.connectors import registry
from workflows.events.connectors.base import ConnectionConfig
from workflows.events.connectors.sink import STRUCTURED, SinkError, encode
from workflows.events.envelope import Envelope
from workflows.steps.base import StepContext, StepError

KINDS = sorted(BROKERS)
# The prefix each binding gives attribute headers (MQTT 5 user properties have none).
PREFIX = {"amqp": "cloudEvents_", "nats": "ce-", "kafka": "ce_", "mqtt": ""}


@pytest.fixture(params=KINDS)
def broker(request):
    made = BROKERS[request.param]()
    yield made
    made.cleanup()


def config_for(broker, *, url: str | None = None, **options) -> ConnectionConfig:
    return ConnectionConfig(
        name=f"t-{broker.uid}",
        kind=broker.kind,
        url=url or broker.url(),
        options={"consume": False, **options},
    )


def event(ce_id: str = "sb-0123456789abcdef0123456789abcdef", **extensions) -> Envelope:
    return Envelope(
        id=ce_id,
        source="/signalbox/runs/7",
        type="com.example.order.shipped",
        subject="order-42",
        time=datetime(2026, 12, 6, 18, 30, tzinfo=UTC),
        datacontenttype="application/json",
        data={"order": 42, "note": "crème brûlée"},
        extensions={"correlationid": "c-1", "partitionkey": "order-42", **extensions},
    )


EXPECTED = {
    "specversion": "1.0",
    "id": "sb-0123456789abcdef0123456789abcdef",
    "source": "/signalbox/runs/7",
    "type": "com.example.order.shipped",
    "subject": "order-42",
    "time": "2026-12-06T18:30:00Z",
    "correlationid": "c-1",
    "partitionkey": "order-42",
}


def binary_attributes(kind: str, raw: Raw) -> dict:
    prefix = PREFIX[kind]
    names = {"content-type", "Nats-Msg-Id"}
    return {
        k[len(prefix) :]: v
        for k, v in raw.headers.items()
        if k.startswith(prefix) and k not in names
    }


def published(broker, envelope: Envelope, *, mode: str, target: dict | None = None, **options):
    sink = registry.get_sink(broker.kind)(config_for(broker, **options))
    target = sink.check_target(target or broker.sink_target("order-42"), mode=mode)
    return sink.publish(encode(envelope, mode=mode), target, timeout=15)


def test_a_binary_mode_event_reaches_a_consumer_with_the_bindings_headers(broker):
    broker.listen()
    receipt = published(broker, event(), mode="binary")
    raw = broker.received()

    assert binary_attributes(broker.kind, raw) == EXPECTED
    assert raw.content_type == "application/json"
    assert json.loads(raw.body) == {"order": 42, "note": "crème brûlée"}
    if broker.kind == "amqp":
        assert raw.message_id == EXPECTED["id"] and receipt["confirmed"] is True
        assert raw.key == broker.key("order-42")
    if broker.kind == "kafka":
        assert raw.key == "order-42"  # the partition key is the message key
        assert receipt["offset"] >= 0
    if broker.kind in ("nats", "mqtt"):
        assert raw.key == broker.key("order-42")


def test_a_structured_mode_event_is_the_whole_cloudevent_as_json(broker):
    broker.listen()
    published(broker, event(), mode="structured")
    raw = broker.received()

    assert raw.content_type == STRUCTURED
    assert json.loads(raw.body) == {
        **EXPECTED,
        "datacontenttype": "application/json",
        "data": {"order": 42, "note": "crème brûlée"},
    }
    assert binary_attributes(broker.kind, raw) == {} or broker.kind == "amqp"


def test_the_signalbox_source_reads_back_what_the_sink_sent(broker):
    """Sink and source agree on the binding: a run's event crosses the broker unchanged."""
    source = registry.get(broker.kind)(
        ConnectionConfig(
            name=f"t-{broker.uid}", kind=broker.kind, url=broker.url(), options=broker.options()
        )
    )
    source.connect()
    # The default source (/signalbox/runs/…) is refused from outside: reserved for
    # Signalbox's own events. A workflow that feeds another Signalbox names its own.
    sent = event()
    sent.source = "/shop/orders"
    try:
        published(broker, sent, mode="binary")
        from tests.waiting import wait_until

        messages = []
        wait_until(
            lambda: messages.extend(source.receive(timeout=0.5, max_messages=1)) or messages,
            timeout=40,
            message="the published message at the source",
        )
        source.ack(messages)
    finally:
        source.close()
    from workflows.events.connectors.binding import envelope_from_message

    back = envelope_from_message(messages[0], kind=broker.kind, connection="t")
    assert (back.id, back.source, back.type, back.subject) == (
        EXPECTED["id"],
        "/shop/orders",
        EXPECTED["type"],
        EXPECTED["subject"],
    )
    assert back.data == {"order": 42, "note": "crème brûlée"}
    assert back.extensions["correlationid"] == "c-1"


def test_a_broker_that_does_not_answer_is_a_retryable_coded_failure(broker):
    closed = free_port()  # nothing listens there
    sink = registry.get_sink(broker.kind)(config_for(broker, url=broker.url(closed)))
    target = sink.check_target(broker.sink_target("x"), mode="binary")

    with pytest.raises(SinkError) as caught:
        sink.publish(encode(event(), mode="binary"), target, timeout=3)

    assert caught.value.retryable is True
    assert caught.value.code == f"{broker.kind}.unreachable"
    assert str(caught.value)


def test_an_amqp_message_no_queue_takes_fails_unretryably_rather_than_vanish():
    broker = BROKERS["amqp"]()  # its exchange exists; no queue is bound to it yet
    try:
        with pytest.raises(SinkError) as caught:
            published(broker, event(), mode="binary")
        assert caught.value.code == "amqp.unroutable" and not caught.value.retryable

        with pytest.raises(SinkError) as missing:
            published(broker, event(), mode="binary", target={"exchange": "sbtest-nowhere"})
        assert missing.value.code == "amqp.404" and not missing.value.retryable
    finally:
        broker.cleanup()


def test_jetstream_stores_a_retried_publish_once_by_its_message_id():
    broker = BROKERS["nats"]()
    try:
        target = {**broker.sink_target("order-42"), "jetstream": True}
        first = published(broker, event(), mode="binary", target=target)
        again = published(broker, event(), mode="binary", target=target)

        assert first["stream"] == broker.stream and first["duplicate"] is False
        assert again["duplicate"] is True and again["seq"] == first["seq"]
        assert broker.stream_messages() == 1
        with pytest.raises(SinkError) as caught:
            published(
                broker, event(), mode="binary", target={"subject": "nostream.x", "jetstream": True}
            )
        assert caught.value.code == "nats.no_stream"
    finally:
        broker.cleanup()


def test_mqtt_3_1_1_refuses_binary_mode_and_sends_structured():
    broker = BROKERS["mqtt"]()
    try:
        broker.listen()
        with pytest.raises(SinkError) as caught:
            published(broker, event(), mode="binary", protocol="3.1.1")
        assert caught.value.code == "mqtt.mode"

        published(broker, event(), mode="structured", protocol="3.1.1")
        raw = broker.received()
        assert json.loads(raw.body)["id"] == EXPECTED["id"]
    finally:
        broker.cleanup()


def test_one_kafka_key_stays_in_one_partition_in_order():
    broker = BROKERS["kafka"]()
    try:
        broker.listen()
        sink = registry.get_sink("kafka")(config_for(broker))
        target = {"topic": broker.topic}
        for n in range(8):
            for key in ("left", "right"):
                envelope = event(ce_id=f"sb-{key}-{n}", partitionkey=key)
                envelope.data = {"n": n}
                sink.publish(encode(envelope, mode="binary"), target, timeout=15)
        seen: dict[str, list] = {"left": [], "right": []}
        for _ in range(16):
            raw = broker.received()
            seen[raw.key].append(json.loads(raw.body)["n"])
        assert seen == {"left": list(range(8)), "right": list(range(8))}
    finally:
        broker.cleanup()


# The `publish` step, without the stack: what it checks before anything is sent.


def step_context(**overrides) -> StepContext:
    values = {
        "run_id": 7,
        "step_id": "out",
        "attempt": 1,
        "idempotency_key": EXPECTED["id"],
        "event": {},
        "steps": {},
        "outbound_allow": (),
        "outgoing_event": lambda config: event(),
        "connection": lambda name: ConnectionConfig(name=name, kind="amqp", url="amqp://x"),
    }
    values.update(overrides)
    return StepContext(**values)


def test_the_http_sink_refuses_an_address_the_guard_forbids_before_connecting(recorder):
    from workflows.steps.registry import get

    with pytest.raises(StepError) as caught:
        get("publish").execute(
            {"type": "com.example.x", "url": f"{recorder.url}/events"},
            step_context(outbound_allow=()),
        )
    assert caught.value.code == "outbound_refused"
    assert recorder.requests == []


def test_a_target_the_sink_does_not_know_fails_the_step_before_connecting():
    from workflows.steps.registry import get

    with pytest.raises(StepError) as caught:
        get("publish").execute(
            {"type": "com.example.x", "connection": "c", "target": {"topic": "t"}},
            step_context(),
        )
    assert caught.value.code == "invalid_target" and "topic" in str(caught.value)
    assert not caught.value.retryable


# End to end: the real web server, bus consumer and Celery worker.


def connection_for(broker, *, url: str | None = None) -> str:
    from workflows.events.connections import add_connection

    name = f"out-{broker.uid}"
    add_connection(name=name, kind=broker.kind, url=url or broker.url(), options={"consume": False})
    return name


def publish_step(connection: str, target: dict, **extra) -> dict:
    return {
        "id": "out",
        "kind": "publish",
        "config": {
            "connection": connection,
            "target": target,
            "type": "com.example.order.shipped",
            "partitionkey": "{{ event.data.order }}",
            "data": {"order": "{{ event.data.order }}"},
        },
        **extra,
    }


@pytest.mark.django_db(transaction=True)
def test_a_run_publishes_its_event_to_the_broker(api, broker):
    broker.listen()
    name = connection_for(broker)
    publish(api, f"pub-{broker.kind}", definition(publish_step(name, broker.sink_target("42"))))
    event_id = send(api, cloudevent(data={"order": 42}))

    run = finished_run(api, f"pub-{broker.kind}", event_id, timeout=60)

    assert run["status"] == "succeeded", run
    [step] = run["steps"]
    raw = broker.received()
    attributes = binary_attributes(broker.kind, raw)
    assert attributes["id"] == step["idempotency_key"] == step["output"]["ce_id"]
    assert attributes["type"] == "com.example.order.shipped"
    assert attributes["source"] == f"/signalbox/runs/{run['id']}"
    assert attributes["partitionkey"] == "42"
    assert json.loads(raw.body) == {"order": 42}
    assert step["output"]["connection"] == name and step["output"]["kind"] == broker.kind


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_broker_is_down_retries_then_fails_clearly(api):
    broker = BROKERS["amqp"]()
    try:
        name = connection_for(broker, url=broker.url(free_port()))
        retry = {"max_attempts": 2, "delay_seconds": 0.1}
        step = publish_step(name, broker.sink_target("42"), retry=retry)
        step["config"]["timeout_seconds"] = 3
        publish(api, "pub-down", definition(step))
        event_id = send(api, cloudevent(data={"order": 42}))

        run = finished_run(api, "pub-down", event_id, timeout=60)
    finally:
        broker.cleanup()

    assert run["status"] == "failed"
    assert run["steps"][0]["attempt"] == 2
    assert "amqp: could not publish" in run["error"]
    from workflows.events.models import DeadLetter
    from workflows.runs.models import StepRun

    attempts = StepRun.objects.filter(run_id=run["id"]).order_by("attempt")
    assert [(a.error_code, a.retryable) for a in attempts] == [("amqp.unreachable", True)] * 2
    letter = DeadLetter.objects.get(run_id=run["id"])
    assert letter.kind == "step" and letter.step_id == "out"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_the_http_sink_posts_the_cloudevent_and_retries_a_503_with_the_same_id(api, recorder, mode):
    recorder.script.append(Reply(status=503, body={"busy": True}))
    step = {
        "id": "out",
        "kind": "publish",
        "config": {
            "url": f"{recorder.url}/events",
            "mode": mode,
            "type": "com.example.order.shipped",
            "subject": "order {{ event.data.order }}",
            "data": {"order": "{{ event.data.order }}"},
        },
        "retry": {"max_attempts": 3, "delay_seconds": 0.1},
    }
    publish(api, f"http-{mode}", definition(step))
    event_id = send(api, cloudevent(data={"order": 42}))

    run = finished_run(api, f"http-{mode}", event_id, timeout=60)

    assert run["status"] == "succeeded", run
    first, second = recorder.requests
    key = run["steps"][0]["idempotency_key"]
    for request in (first, second):
        assert request.method == "POST" and request.path == "/events"
        assert request.headers["Idempotency-Key"] == key
    if mode == "binary":
        assert second.headers["ce-id"] == first.headers["ce-id"] == key
        assert second.headers["ce-subject"] == "order%2042"  # a space is percent-encoded
        assert second.headers["Content-Type"] == "application/json"
        assert second.json() == {"order": 42}
    else:
        assert second.headers["Content-Type"] == STRUCTURED
        body = second.json()
        assert body["id"] == key and body["subject"] == "order 42"
        assert body["data"] == {"order": 42}
    assert run["steps"][0]["output"]["status"] == 200


def test_a_kafka_connection_reads_the_topics_it_names_or_only_publishes():
    from workflows.events.connectors.base import InvalidConnection
    from workflows.events.connectors.kafka import KafkaConnector

    assert KafkaConnector.check_options({"topics": ["orders"]}) == {"topics": ["orders"]}
    with pytest.raises(InvalidConnection, match="topics"):
        KafkaConnector.check_options({})
    assert KafkaConnector.check_options({"consume": False}) == {"consume": False}


def test_a_kafka_session_timeout_outside_3_to_3600_seconds_is_refused():
    from workflows.events.connectors.base import InvalidConnection
    from workflows.events.connectors.kafka import KafkaConnector

    for session in (2, 3601, "10", True, float("nan")):
        with pytest.raises(InvalidConnection, match="session_timeout_seconds"):
            KafkaConnector.check_options({"topics": ["t"], "session_timeout_seconds": session})
    assert KafkaConnector.check_options({"topics": ["t"], "session_timeout_seconds": 3})
