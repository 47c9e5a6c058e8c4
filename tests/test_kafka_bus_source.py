"""A Kafka source read by the real bus consumer process (`manage.py consume_bus` of the test
stack), against a private Tansu it can stop and start: messages become runs; disabling
and removing the connection while messages flow leaves the process serving other work (an
event posted over HTTP still starts a run); a broker that goes away and comes back is read
again. (Once a reader's synchronous offset commit, made as the broker went away, blocked
its thread until the broker came back: see workflows/events/connectors/kafka.py.)"""

from __future__ import annotations

import json
import uuid

import pytest
from django.core.management import call_command

from orchestrator.embedded_redis import free_port
from tests import kafka_server
from tests.connector_brokers import KafkaBroker
from tests.factories import cloudevent, definition, log_step
from tests.waiting import wait_until
from workflows.events.models import Connection
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

KAFKA_TYPE = "com.example.kafka.reading"
HTTP_TYPE = "com.example.http.ping"
CE_JSON = "application/cloudevents+json"


class PrivateKafka:
    """A Tansu of the test's own, stopped and started at will (memory storage: a restart
    forgets the topic, so it is made again, with a new producer)."""

    def __init__(self):
        self.port = free_port()
        self.server = None
        self.start()
        self.broker = KafkaBroker(port=self.port)
        self.broker.wait = True

    def start(self):
        self.server = kafka_server.start(port=self.port)
        wait_until(lambda: kafka_server.answers(self.port), message="the private Tansu")

    def stop(self):
        self.server.kill()
        self.server.wait(10)

    def restart(self):
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        self.start()
        bootstrap = {"bootstrap.servers": f"127.0.0.1:{self.port}"}
        topic = NewTopic(self.broker.topic, KafkaBroker.partitions, replication_factor=1)
        admin = AdminClient(bootstrap)  # held until the result: its handle answers it
        [created] = admin.create_topics([topic]).values()
        created.result(timeout=20)
        self.broker.producer = Producer(bootstrap | {"enable.idempotence": True})

    def send(self, ce_id: str, n: int) -> None:
        body = {"specversion": "1.0", "type": KAFKA_TYPE, "source": "/meters", "id": ce_id}
        body["data"] = {"n": n}
        self.broker.publish(
            self.broker.key(f"meter-{n % 3}"), json.dumps(body).encode(), content_type=CE_JSON
        )


@pytest.fixture
def kafka():
    made = PrivateKafka()
    yield made
    made.stop()


def publish_workflow(api, slug: str, event: str) -> None:
    body = definition(log_step("note"), event=event)
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def runs_for(*ce_ids: str) -> int:
    return Run.objects.filter(event__ce_id__in=ce_ids).count()


def wait_for_runs(ce_ids: list[str], what: str) -> None:
    # Generous: a consumer joining its group waits out the rebalance first.
    wait_until(lambda: runs_for(*ce_ids) == len(ce_ids), timeout=90, message=what)


def http_event_starts_a_run(api, stack, when: str) -> None:
    """The bus consumer still serves other work: an event posted over HTTP starts a run."""
    event = cloudevent(HTTP_TYPE, id=f"ping-{uuid.uuid4()}")
    response = api.post(
        "/api/v1/events", content=json.dumps(event), headers={"Content-Type": CE_JSON}
    )
    assert response.status_code == 202, response.text
    wait_until(
        lambda: runs_for(event["id"]) == 1,
        timeout=60,
        message=f"a run for the HTTP event {when} (bus log: {stack.log_tail('bus', 15)})",
    )
    assert stack.processes["bus"].poll() is None, "the bus consumer exited"


def test_a_kafka_source_in_the_bus_consumer_survives_disable_remove_and_broker_restarts(
    api, stack, kafka
):
    publish_workflow(api, f"kafka-{kafka.broker.uid}", KAFKA_TYPE)
    publish_workflow(api, f"http-{kafka.broker.uid}", HTTP_TYPE)
    name = f"kbus-{kafka.broker.uid}"
    state = lambda: Connection.objects.get(name=name).state  # noqa: E731
    add = [
        "connectors",
        "add",
        name,
        "kafka",
        f"kafka://127.0.0.1:{kafka.port}",
        "--options",
        json.dumps(kafka.broker.options()),
    ]
    try:
        call_command(*add)
        wait_until(lambda: state() == "connected", timeout=60, message="connected")
        first = [f"k-{kafka.broker.uid}-{n}" for n in range(6)]
        for n, ce_id in enumerate(first):
            kafka.send(ce_id, n)
        wait_for_runs(first, "runs for the first messages")

        # Disabled while messages flow: the reader stops, the process goes on.
        during = [f"k-{kafka.broker.uid}-d{n}" for n in range(6)]
        for n, ce_id in enumerate(during[:3]):
            kafka.send(ce_id, n)
        call_command("connectors", "disable", name)
        for n, ce_id in enumerate(during[3:], start=3):
            kafka.send(ce_id, n)
        wait_until(lambda: state() == "idle", timeout=30, message="the reader to stop")
        http_event_starts_a_run(api, stack, "after the disable")
        call_command("connectors", "enable", name)
        wait_for_runs(during, "runs for the messages sent around the disable")

        # The broker goes away and comes back (a new, empty Tansu on the same port).
        kafka.stop()
        wait_until(lambda: state() == "reconnecting", timeout=60, message="the outage noticed")
        assert Connection.objects.get(name=name).last_error
        http_event_starts_a_run(api, stack, "while the broker is down")
        # Restarted empty (memory storage), its topic made again while the connection is
        # disabled: a reader that reconnects to the new server before the topic exists
        # was not seen to resume within 90 s in 2 runs of 3 (open; see docs/connectors.md).
        call_command("connectors", "disable", name)
        wait_until(lambda: state() == "idle", timeout=30, message="the reader to stop again")
        kafka.restart()
        call_command("connectors", "enable", name)
        after = [f"k-{kafka.broker.uid}-a{n}" for n in range(6)]
        for n, ce_id in enumerate(after):
            kafka.send(ce_id, n)
        wait_for_runs(after, "runs for the messages sent after the broker came back")
        assert state() == "connected"

        # Removed while messages flow, then while the broker is gone.
        last = [f"k-{kafka.broker.uid}-r{n}" for n in range(3)]
        for n, ce_id in enumerate(last):
            kafka.send(ce_id, n)
        call_command("connectors", "remove", name)
        http_event_starts_a_run(api, stack, "after the remove")
        # (Another name: one removed and added back with the same settings within the
        # supervisor's refresh is no change to it.)
        name = f"kbus2-{kafka.broker.uid}"
        add[2] = name
        call_command(*add)
        wait_until(lambda: state() == "connected", timeout=60, message="connected again")
        kafka.stop()
        wait_until(lambda: state() == "reconnecting", timeout=60, message="the second outage")
        call_command("connectors", "remove", name)
        http_event_starts_a_run(api, stack, "after a remove with the broker gone")
    finally:
        Connection.objects.filter(name__endswith=kafka.broker.uid).delete()
    # Every message read became exactly one run (dedupe on the CloudEvent id).
    assert runs_for(*first, *during, *after) == len(first + during + after)
