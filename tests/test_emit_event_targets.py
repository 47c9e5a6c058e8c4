"""`emit_event` with `to`: the emitted event is stored and put on the bus as always, and the
stored event is sent on to broker connections and HTTP endpoints with the `publish` step's
guarantees (confirmed, coded failures, retries that send only where it did not arrive,
the outbound guard). Destinations are checked against the connections when a workflow is
published. Then the sink clients a worker keeps: reused across publishes, replaced when a
connection is edited, and re-made after the broker went away in between.

Against the real local brokers (RabbitMQ :5672, NATS :4222, Mosquitto :1883, Tansu :9092).
"""

from __future__ import annotations

import json

import pytest

from orchestrator.embedded_redis import free_port
from tests.chaos.proxy import FaultProxy
from tests.connector_brokers import BROKERS, KafkaBroker
from tests.factories import cloudevent, definition
from tests.http_recorder import Reply
from tests.test_connector_sinks import binary_attributes, config_for, connection_for, event
from tests.test_spine import finished_run, publish, send
from tests.waiting import wait_until
from workflows.events.connectors import registry, sink_clients
from workflows.events.connectors.base import ConnectionConfig
from workflows.events.connectors.sink import SinkError, encode
from workflows.events.envelope import Envelope
from workflows.steps.base import StepContext, StepError

KINDS = sorted(BROKERS)
SHIPPED = "com.example.order.shipped"


@pytest.fixture(params=KINDS)
def broker(request):
    made = BROKERS[request.param]()
    yield made
    made.cleanup()


@pytest.fixture(autouse=True)
def no_kept_clients():
    """Each test starts and ends with no client kept by this process."""
    sink_clients.close_all()
    yield
    sink_clients.close_all()


def emit_step(*destinations: dict, **extra) -> dict:
    return {
        "id": "announce",
        "kind": "emit_event",
        "config": {
            "type": SHIPPED,
            "subject": "order-{{ event.data.order }}",
            "partitionkey": "{{ event.data.order }}",
            "data": {"order": "{{ event.data.order }}"},
            "to": list(destinations),
        },
        **extra,
    }


def stored(ce_id: str):
    from workflows.events.models import Event

    return list(Event.objects.filter(ce_id=ce_id))


# --- end to end: the real web server, bus consumer and Celery worker -------------------------


@pytest.mark.django_db(transaction=True)
def test_an_emitted_event_is_stored_and_sent_to_the_broker_as_stored(api, broker):
    broker.listen()
    name = connection_for(broker)
    target = broker.sink_target("42")
    publish(
        api, f"emit-{broker.kind}", definition(emit_step({"connection": name, "target": target}))
    )
    event_id = send(api, cloudevent(data={"order": 42}))

    run = finished_run(api, f"emit-{broker.kind}", event_id, timeout=60)

    assert run["status"] == "succeeded", run
    [step] = run["steps"]
    [kept] = stored(step["idempotency_key"])  # recorded in Signalbox's store, once
    assert step["output"]["id"] == kept.pk and step["output"]["duplicate"] is False
    [receipt] = step["output"]["sent"]
    assert receipt["connection"] == name and receipt["kind"] == broker.kind
    raw = broker.received()
    attributes = binary_attributes(broker.kind, raw)
    # What went out is the stored event: same id, source, time and conversation.
    assert attributes["id"] == kept.ce_id
    assert attributes["source"] == kept.source == f"/signalbox/runs/{run['id']}"
    assert attributes["type"] == SHIPPED and attributes["subject"] == "order-42"
    assert attributes["time"] == kept.time.isoformat().replace("+00:00", "Z")
    assert attributes["correlationid"] == kept.correlation_id
    assert attributes["causationid"] == kept.causation_id
    assert attributes["partitionkey"] == "42"
    assert json.loads(raw.body) == kept.data == {"order": 42}


@pytest.mark.django_db(transaction=True)
def test_a_retry_sends_only_to_the_destinations_that_did_not_confirm(api, recorder):
    amqp = BROKERS["amqp"]()
    try:
        amqp.listen()
        name = connection_for(amqp)
        recorder.script.append(Reply(status=503, body={"busy": True}))
        step = emit_step(
            {"connection": name, "target": amqp.sink_target("7")},
            {"url": f"{recorder.url}/events", "mode": "structured"},
            retry={"max_attempts": 3, "delay_seconds": 0.1},
        )
        publish(api, "emit-retry", definition(step))
        event_id = send(api, cloudevent(data={"order": 7}))

        run = finished_run(api, "emit-retry", event_id, timeout=60)

        assert run["status"] == "succeeded", run
        [step_run] = run["steps"]
        assert step_run["attempt"] == 2
        key = step_run["idempotency_key"]
        assert len(stored(key)) == 1  # the retry stored no second event
        # RabbitMQ confirmed on attempt 1: attempt 2 did not send it there again.
        first = amqp.received()
        assert first.message_id == key
        assert amqp.channel.basic_get(amqp.queue, auto_ack=True)[0] is None
        failed, confirmed = recorder.requests
        for request in (failed, confirmed):
            assert request.headers["Idempotency-Key"] == key
            assert request.json()["id"] == key
        amqp_receipt, http_receipt = step_run["output"]["sent"]
        assert amqp_receipt["confirmed"] is True and http_receipt["status"] == 200
        from workflows.runs.models import StepRun

        first_attempt, _second = StepRun.objects.filter(run_id=run["id"]).order_by("attempt")
        assert first_attempt.error_code == "http.503" and first_attempt.retryable
        assert "the event is stored, but to[1]" in first_attempt.error
    finally:
        amqp.cleanup()


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_destination_fails_the_step_with_its_code_after_storing_the_event(api):
    nats = BROKERS["nats"]()
    try:
        name = connection_for(nats, url=nats.url(free_port()))
        destination = {"connection": name, "target": nats.sink_target("5"), "timeout_seconds": 2}
        step = emit_step(destination, retry={"max_attempts": 2, "delay_seconds": 0.1})
        publish(api, "emit-down", definition(step))
        event_id = send(api, cloudevent(data={"order": 5}))

        run = finished_run(api, "emit-down", event_id, timeout=60)
    finally:
        nats.cleanup()

    assert run["status"] == "failed"
    from workflows.runs.models import StepRun

    attempts = StepRun.objects.filter(run_id=run["id"]).order_by("attempt")
    assert [(a.error_code, a.retryable) for a in attempts] == [("nats.unreachable", True)] * 2
    assert len(stored(attempts[0].idempotency_key)) == 1  # stored, and by the first attempt


# --- checked when the workflow is published --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_publishing_a_workflow_that_sends_where_it_cannot_is_refused_naming_each_place(api):
    from workflows.events.connections import add_connection

    add_connection(
        name="rabbit-out", kind="amqp", url="amqp://127.0.0.1:5672/%2F", options={"consume": False}
    )
    add_connection(
        name="old-mqtt",
        kind="mqtt",
        url="mqtt://127.0.0.1:1883",
        options={"consume": False, "protocol": "3.1.1"},
    )
    emit = emit_step(
        {"connection": "nowhere", "target": {"subject": "x"}},
        {"connection": "rabbit-out", "target": {"topic": "orders"}},
        {"connection": "old-mqtt", "target": {"topic": "orders/x"}},
        # Fine: templates are judged when the run renders them.
        {
            "connection": "rabbit-out",
            "target": {
                "routing_key": "{{ event.data.key }}",
                "mandatory": "{{ event.data.strict }}",
            },
        },
        {"connection": "old-mqtt", "target": {"topic": "o/{{ event.id }}"}, "mode": "structured"},
    )
    pub = {
        "id": "ship",
        "kind": "publish",
        "config": {"type": SHIPPED, "connection": "gone", "target": {"topic": "t"}},
    }
    body = definition(emit, pub)
    assert api.put("/api/v1/workflows/sends", json=body).status_code in (200, 201)

    refused = api.post("/api/v1/workflows/sends/publish")

    assert refused.status_code == 422  # problems every run would hit (preflight)
    assert refused.headers["content-type"].startswith("application/problem+json")
    errors = {e["path"]: e["message"] for e in refused.json()["errors"]}
    assert set(errors) == {
        "/steps/0/config/to/0/connection",
        "/steps/0/config/to/1/target",
        "/steps/0/config/to/2/mode",
        "/steps/1/config/connection",
    }
    assert "no connection named 'nowhere'" in errors["/steps/0/config/to/0/connection"]
    assert "unknown target option 'topic' for amqp" in errors["/steps/0/config/to/1/target"]
    assert "structured mode only" in errors["/steps/0/config/to/2/mode"]
    assert "no connection named 'gone'" in errors["/steps/1/config/connection"]
    from workflows.catalog.models import Workflow

    assert Workflow.objects.get(slug="sends").published_version is None

    # Fixed, it publishes.
    emit["config"]["to"] = emit["config"]["to"][3:]
    pub["config"]["connection"] = "old-mqtt"
    pub["config"]["mode"] = "structured"
    assert api.put("/api/v1/workflows/sends", json=definition(emit, pub)).status_code in (200, 201)
    assert api.post("/api/v1/workflows/sends/publish").status_code == 201


def test_a_destination_of_the_wrong_shape_is_refused_by_the_steps_schema():
    from workflows.catalog.definition_parsing import parse_definition as parse
    from workflows.core.definition import InvalidDefinition

    both = {"connection": "c", "target": {}, "url": "https://hooks.example.com/e"}
    for destination, path in (
        (both, "/steps/0/config/to/0"),
        ({"connection": "c"}, "/steps/0/config/to/0"),
        ({"url": "ftp://x"}, "/steps/0/config/to/0/url"),
    ):
        with pytest.raises(InvalidDefinition) as caught:
            parse(definition(emit_step(destination)))
        assert any(p.path.startswith(path) for p in caught.value.problems), caught.value


# --- the step alone: what it refuses before anything is sent ---------------------------------


def step_context(**overrides) -> StepContext:
    kept = event()
    values = {
        "run_id": 7,
        "step_id": "announce",
        "attempt": 1,
        "idempotency_key": kept.id,
        "event": {},
        "steps": {},
        "outbound_allow": (),
        "emit": lambda config: {"id": 1, "ce_id": kept.id, "type": SHIPPED, "duplicate": False},
        "stored_event": lambda event_id: kept,
        "connection": lambda name: ConnectionConfig(name=name, kind="amqp", url="amqp://x"),
    }
    values.update(overrides)
    return StepContext(**values)


def test_an_http_destination_the_guard_forbids_is_refused_before_connecting(recorder):
    from workflows.steps.registry import get

    with pytest.raises(StepError) as caught:
        get("emit_event").execute(
            {"type": SHIPPED, "to": [{"url": f"{recorder.url}/events"}]}, step_context()
        )
    assert caught.value.code == "outbound_refused" and not caught.value.retryable
    assert "the event is stored, but to[0]" in str(caught.value)
    assert recorder.requests == []


def test_a_secret_header_goes_only_to_a_fixed_host():
    from workflows.catalog.definition_parsing import parse_definition as parse
    from workflows.core.definition import InvalidDefinition

    header = {"Authorization": "Bearer {{ secrets.hook_token }}"}
    fixed = {"url": "https://hooks.example.com/{{ event.id }}", "headers": header}
    parse(definition(emit_step(fixed)))  # accepted
    chosen = {"url": "https://{{ event.data.host }}/e", "headers": header}
    with pytest.raises(InvalidDefinition) as caught:
        parse(definition(emit_step(fixed, chosen)))
    assert [p.path for p in caught.value.problems] == ["/steps/0/config/to/1/url"]


# --- the clients a worker process keeps -------------------------------------------------------


def publish_one(config: ConnectionConfig, target: dict, envelope: Envelope, timeout=5) -> dict:
    sink = registry.get_sink(config.kind)(config)
    target = sink.check_target(target, mode="binary")
    return sink.publish(encode(envelope, mode="binary"), target, timeout=timeout)


def test_publishes_reuse_one_client_and_an_edited_connection_gets_a_new_one(broker):
    broker.listen()
    config = config_for(broker)
    opened = sink_clients.opened
    for n in range(3):
        publish_one(config, broker.sink_target("order-42"), event(f"sb-reuse-{n}"))

    assert sink_clients.opened == opened + 1 and sink_clients.kept_clients() == 1

    edited = ConnectionConfig(
        name=config.name,
        kind=config.kind,
        url=config.url,
        options=config.options,
        default_type="com.example.edited",
    )
    publish_one(edited, broker.sink_target("order-42"), event("sb-reuse-edited"))

    assert sink_clients.opened == opened + 2
    assert sink_clients.kept_clients() == 1  # the client of the old settings is closed
    ids = [binary_attributes(broker.kind, broker.received())["id"] for _ in range(4)]
    assert sorted(ids) == ["sb-reuse-0", "sb-reuse-1", "sb-reuse-2", "sb-reuse-edited"]


@pytest.fixture
def proxied(request):
    """A broker of `request.param` kind reached through a fault proxy (Kafka: a private
    Tansu that tells its clients to come back through the proxy)."""
    kind = request.param
    tansu = None
    if kind == "kafka":
        from tests import kafka_server

        port = free_port()
        proxy = FaultProxy(port, name="kafka")
        proxy_port = proxy.start()
        tansu = kafka_server.start(port=port, advertised_port=proxy_port)
        wait_until(lambda: kafka_server.answers(port), timeout=30, message="a private Tansu")
        made = KafkaBroker(port=port)
    else:
        made = BROKERS[kind]()
        proxy = FaultProxy(made.port, name=kind)
        proxy_port = proxy.start()
    try:
        yield made, proxy, proxy_port
    finally:
        sink_clients.close_all()
        proxy.up()  # a test that failed while it was down
        made.cleanup()
        proxy.stop()
        if tansu is not None:
            tansu.terminate()
            tansu.wait(10)


@pytest.mark.parametrize("proxied", KINDS, indirect=True)
def test_a_broker_gone_between_two_publishes_still_gets_the_second(proxied):
    broker, proxy, proxy_port = proxied
    broker.listen()
    config = config_for(broker, url=broker.url(proxy_port))
    target = broker.sink_target("order-42")
    publish_one(config, target, event("sb-before"))
    assert binary_attributes(broker.kind, broker.received())["id"] == "sb-before"

    # Every open connection cut, as a broker restart does: the kept client is stale.
    proxy.reset()
    opened = sink_clients.opened
    publish_one(config, target, event("sb-after-reset"))
    assert binary_attributes(broker.kind, broker.received())["id"] == "sb-after-reset"
    if broker.kind != "kafka":  # librdkafka reconnects a kept producer by itself
        assert sink_clients.opened == opened + 1  # a new client in place of the stale one

    # Down for a while: a publish fails as retryable and coded, and drops its client...
    proxy.down()
    with pytest.raises(SinkError) as caught:
        publish_one(config, target, event("sb-while-down"))
    assert caught.value.retryable and caught.value.code == f"{broker.kind}.unreachable"
    assert sink_clients.kept_clients() == 0

    # ...and back: the next publish connects again and is delivered.
    proxy.up()
    publish_one(config, target, event("sb-back"))
    seen = [binary_attributes(broker.kind, broker.received())["id"]]
    if seen != ["sb-back"]:  # Kafka may have written the timed-out one after all
        seen.append(binary_attributes(broker.kind, broker.received())["id"])
    assert "sb-back" in seen and set(seen) <= {"sb-back", "sb-while-down"}
