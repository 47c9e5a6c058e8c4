"""Named broker connections: configured by command and API, passwords only by secret name,
health shown, and read by the running bus consumer end to end (a message on the broker
starts a run)."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from dashboard import metrics
from tests.connector_brokers import BROKERS
from tests.factories import definition, log_step
from tests.test_dashboard_pages import signed_in
from tests.waiting import wait_until
from workflows.access.secrets import set_secret
from workflows.access.tokens import create_api_token
from workflows.events.connections import record_state
from workflows.events.models import Connection
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

# Kafka is read end to end by the bus consumer in tests/test_kafka_bus_source.py (its own
# broker, stopped and started); here the kinds on the shared system brokers.
READ_KINDS = sorted(k for k in BROKERS if k != "kafka")


def publish_workflow(api, slug: str, event: str) -> None:
    body = definition(log_step("note"), event=event)
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


@pytest.mark.parametrize("kind", READ_KINDS)
def test_a_message_published_to_the_broker_starts_a_run(api, kind):
    broker = BROKERS[kind]()
    try:
        event_type = f"com.example.{kind}.reading"
        publish_workflow(api, f"on-{kind}-{broker.uid}", event_type)
        name = f"e2e-{broker.uid}"
        call_command(
            "connectors",
            "add",
            name,
            kind,
            broker.url(),
            "--options",
            json.dumps(broker.options()),
            "--type",
            event_type,
        )
        wait_until(lambda: Connection.objects.get(name=name).state == "connected", timeout=60)

        broker.publish(broker.key("device-7"), b'{"celsius": 30}', content_type="application/json")

        run = wait_until(
            lambda: Run.objects.filter(event__type=event_type, status="succeeded").first(),
            timeout=60,
        )
        assert run.event.data == {"celsius": 30}
        assert run.event.extensions["partitionkey"] == broker.key("device-7")
    finally:
        Connection.objects.filter(name=f"e2e-{broker.uid}").delete()
        broker.cleanup()


@pytest.mark.parametrize("kind", READ_KINDS)
def test_runs_start_in_the_order_a_key_s_messages_were_published(api, kind):
    broker = BROKERS[kind]()
    name = f"order-{broker.uid}"
    try:
        event_type = f"com.example.{kind}.step"
        publish_workflow(api, f"in-order-{kind}-{broker.uid}", event_type)
        call_command(
            "connectors",
            "add",
            name,
            kind,
            broker.url(),
            "--options",
            json.dumps(broker.options()),
            "--type",
            event_type,
        )
        wait_until(lambda: Connection.objects.get(name=name).state == "connected", timeout=60)
        for n in range(12):
            key = broker.key("left" if n % 2 else "right")
            broker.publish(key, json.dumps({"n": n}).encode(), content_type="application/json")

        runs = wait_until(
            lambda: (
                (found := list(Run.objects.filter(event__type=event_type).order_by("id")))
                and len(found) == 12
                and found
            ),
            timeout=60,
        )
        for side in ("left", "right"):
            key = broker.key(side)
            order = [r.event.data["n"] for r in runs if r.event.extensions["partitionkey"] == key]
            assert order == sorted(order) and len(order) == 6, (side, order)
    finally:
        Connection.objects.filter(name=name).delete()
        broker.cleanup()


def test_the_command_adds_lists_and_removes_a_connection_with_its_health():
    set_secret(name="rabbit-password", value="s3cret-value")
    call_command(
        "connectors",
        "add",
        "orders",
        "amqp",
        "amqp://127.0.0.1:5672/%2F",
        "--options",
        '{"queue": "orders"}',
        "--username",
        "signalbox",
        "--password-secret",
        "rabbit-password",
    )
    record_state(name="orders", state="reconnecting", error="ConnectionError: refused")
    out = io.StringIO()
    call_command("connectors", "list", stdout=out)
    assert "orders\tamqp" in out.getvalue()
    assert "reconnecting" in out.getvalue()
    assert "ConnectionError: refused" in out.getvalue()
    assert "s3cret-value" not in out.getvalue()
    call_command("connectors", "remove", "orders")
    assert not Connection.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x", "pulsar", "pulsar://127.0.0.1:6650"], "kind must be one of"),
        (["x", "amqp", "http://127.0.0.1"], "amqp URL looks like"),
        (["x", "amqp", "amqp://u:pw@127.0.0.1"], "must not hold a password"),
        (["x", "amqp", "amqp://127.0.0.1"], "needs the option 'queue'"),
        (["x", "mqtt", "mqtt://127.0.0.1", "--options", '{"topics": "a/#"}'], "list of topic"),
        (["x", "nats", "nats://127.0.0.1", "--options", "[1]"], "JSON object"),
        (
            [
                "x",
                "amqp",
                "amqp://127.0.0.1",
                "--options",
                '{"queue": "q"}',
                "--password-secret",
                "nope",
            ],
            "no secret named 'nope'",
        ),
        (["bad name", "amqp", "amqp://127.0.0.1"], "a name is letters"),
    ],
)
def test_the_command_refuses_a_connection_that_cannot_work(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("connectors", "add", *args)
    assert not Connection.objects.exists()


def test_the_api_creates_shows_changes_and_deletes_a_connection_without_passwords(api):
    set_secret(name="nats-password", value="another-s3cret")
    created = api.post(
        "/api/v1/connections",
        json={
            "name": "telemetry",
            "kind": "nats",
            "url": "nats://127.0.0.1:4222",
            "username": "signalbox",
            "password_secret": "nats-password",
            "options": {"stream": "TELEMETRY", "subjects": ["telemetry.>"]},
            "enabled": False,
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["health"]["state"] == "disabled"
    assert "another-s3cret" not in created.text

    listed = api.get("/api/v1/connections").json()["connections"]
    assert [c["name"] for c in listed] == ["telemetry"]

    changed = api.patch("/api/v1/connections/telemetry", json={"default_type": "com.example.t"})
    assert changed.status_code == 200
    assert changed.json()["default_type"] == "com.example.t"

    assert api.delete("/api/v1/connections/telemetry").status_code == 204
    assert api.get("/api/v1/connections/telemetry").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {
            "name": "x",
            "kind": "amqp",
            "url": "amqp://127.0.0.1",
            "options": {"queue": "q"},
            "password": "plaintext",
        },
        {"name": "x", "kind": "mqtt", "url": "mqtt://127.0.0.1"},
        {"kind": "amqp", "url": "amqp://127.0.0.1"},
        ["not", "an", "object"],
    ],
)
def test_the_api_answers_bad_connections_with_a_problem(api, body):
    answer = api.post("/api/v1/connections", json=body)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert not Connection.objects.exists()


def test_changing_connections_needs_the_admin_role(api, stack):
    _token, viewer = create_api_token(name="viewer", role="operator")
    answer = api.post(
        "/api/v1/connections",
        json={"name": "x", "kind": "amqp", "url": "amqp://127.0.0.1", "options": {"queue": "q"}},
        headers={"Authorization": f"Bearer {viewer}"},
    )
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"


def test_the_workers_page_shows_each_connection_with_its_state_and_last_error(client):
    call_command(
        "connectors",
        "add",
        "devices",
        "mqtt",
        "mqtt://127.0.0.1:1883",
        "--options",
        '{"topics": ["sensors/#"]}',
        "--disabled",
    )
    call_command(
        "connectors",
        "add",
        "orders",
        "amqp",
        "amqp://127.0.0.1:5672/%2F",
        "--options",
        '{"queue": "orders"}',
        "--disabled",
    )
    # Kept disabled, so no bus consumer of a running stack touches them while this reads.
    record_state(name="orders", state="reconnecting", error="ConnectionError: refused")
    signed_in(client, "viewer")
    metrics.cache.clear()

    html = client.get("/system/").content.decode()

    assert 'data-connection="devices" data-state="disabled"' in html
    assert 'data-connection="orders" data-state="disabled"' in html
    assert "ConnectionError: refused" in html
    assert html.count("ConnectionError: refused") == 1  # the orders row only


def test_an_admin_adds_disables_and_removes_a_connection_in_the_dashboard(client):
    signed_in(client, "admin")
    refused = client.post(
        "/connections/",
        {"name": "devices", "kind": "mqtt", "url": "mqtt://u:pw@127.0.0.1:1883", "options": "{}"},
    )
    assert refused.status_code == 400
    assert "must not hold a password" in refused.content.decode()

    added = client.post(
        "/connections/",
        {
            "name": "devices",
            "kind": "mqtt",
            # A port nothing listens on: a bus consumer of a running stack reads nothing.
            "url": "mqtt://127.0.0.1:9",
            "options": '{"topics": ["sensors/#"]}',
            "default_type": "com.example.reading",
        },
    )
    assert added.status_code == 302
    assert client.post("/connections/devices/disable/").status_code == 302
    page = client.get("/connections/").content.decode()
    assert 'data-connection="devices" data-state="disabled"' in page
    assert client.post("/connections/devices/remove/").status_code == 302
    assert not Connection.objects.exists()


def test_a_viewer_sees_connections_but_cannot_change_them(client):
    call_command(
        "connectors",
        "add",
        "orders",
        "amqp",
        "amqp://127.0.0.1:5672/%2F",
        "--options",
        '{"queue": "orders"}',
        "--disabled",
    )
    signed_in(client, "viewer")
    page = client.get("/connections/").content.decode()
    assert 'data-connection="orders"' in page
    assert "new-connection-form" not in page
    assert client.post("/connections/orders/remove/").status_code == 403
    assert Connection.objects.filter(name="orders").exists()
