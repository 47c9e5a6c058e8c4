"""The CLI: `manage.py emit` sends an event through the ingest service, `manage.py tail`
follows the bus live without taking entries from the bus consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from tests.stack import ROOT, database_url_for
from tests.waiting import wait_until
from workflows.events import bus
from workflows.events.models import Event, EventSchema, EventType
from workflows.infra.redis_client import client as redis_client


def emit(*args: str) -> str:
    out = StringIO()
    call_command("emit", *args, stdout=out)
    return out.getvalue()


def manage_env() -> dict[str, str]:
    """This test run's environment, pointed at the test database (like tests/stack.py)."""
    env = dict(
        os.environ,
        DATABASE_URL=database_url_for(settings.DATABASES["default"]["NAME"]),
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
        PYTHONUNBUFFERED="1",
    )
    env.pop("SIGNALBOX_TEST_DB_NAME", None)
    return env


class Tail:
    """`manage.py tail` as a real process; its output is collected by reader threads."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "tail", *args],
            cwd=ROOT,
            env=manage_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line.rstrip("\n"))

    def wait_ready(self) -> None:
        """Tail announces itself once it knows where each partition ends: from then on no
        new event can slip past it."""

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"tail exited early: {self.err}")
            return any(line.startswith("tailing") for line in self.err)

        wait_until(ready, timeout=90, interval=0.1, message="tail to start")

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        for reader in self.readers:
            reader.join(timeout)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def tails():
    started: list[Tail] = []

    def start(*args: str) -> Tail:
        started.append(Tail(*args))
        return started[-1]

    yield start
    for tail in started:
        tail.close()


@pytest.mark.django_db
def test_emit_stores_the_event_through_the_ingest_service_and_prints_its_id():
    out = emit(
        "com.example.order.placed",
        "--data",
        '{"order": 1}',
        "--subject",
        "order-1",
        "--source",
        "/ops",
        "--ext",
        "partitionkey=o-1",
    )

    event = Event.objects.get()
    assert out.strip().startswith(f"stored event {event.pk}:")
    assert (event.type, event.source, event.subject) == (
        "com.example.order.placed",
        "/ops",
        "order-1",
    )
    assert event.data == {"order": 1}
    assert event.channel == "manual"
    assert event.extensions["partitionkey"] == "o-1"
    assert event.correlation_id == event.ce_id


@pytest.mark.django_db
def test_emit_without_a_source_names_the_cli_user():
    emit("com.example.ping")

    event = Event.objects.get()
    assert event.source.startswith("/signalbox/cli/")
    assert event.data is None


@pytest.mark.django_db
def test_emitting_the_same_id_twice_says_it_is_a_duplicate():
    first = emit("com.example.ping", "--id", "ping-1", "--source", "/ops")
    second = emit("com.example.ping", "--id", "ping-1", "--source", "/ops")

    event = Event.objects.get()
    assert first.startswith(f"stored event {event.pk}")
    assert second.startswith(f"duplicate: event {event.pk} was already stored")


@pytest.mark.django_db
def test_emit_refuses_bad_json_with_the_reason():
    with pytest.raises(CommandError, match="invalid JSON"):
        emit("com.example.ping", "--data", '{"order": ')

    assert not Event.objects.exists()


@pytest.mark.django_db
def test_emit_refuses_an_invalid_event_naming_the_attribute():
    with pytest.raises(CommandError, match="Bad-Name: extension attribute names"):
        emit("com.example.ping", "--ext", "Bad-Name=1")

    assert not Event.objects.exists()


@pytest.mark.django_db
def test_emit_refuses_data_that_breaks_the_type_schema():
    EventSchema.objects.create(
        event_type=EventType.objects.create(name="com.example.order.placed"),
        version=1,
        schema={"type": "object", "required": ["order"]},
    )

    with pytest.raises(CommandError, match=r"schema violation.*'order' is a required property"):
        emit("com.example.order.placed", "--data", "{}")

    assert not Event.objects.exists()


@pytest.mark.django_db
def test_emit_exits_non_zero_with_the_reason_on_bad_json():
    result = subprocess.run(
        [sys.executable, "manage.py", "emit", "com.example.ping", "--data", "[1,"],
        cwd=ROOT,
        env=manage_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    assert "invalid JSON" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_tail_prints_an_event_emitted_after_it_started(tails):
    tail = tails("--count", "1")
    tail.wait_ready()

    emit(
        "com.example.order.placed",
        "--subject",
        "order-3",
        "--source",
        "/ops",
        "--id",
        "tail-1",
        "--ext",
        "correlationid=conv-3",
    )

    assert tail.finish() == 0
    event = Event.objects.get()
    [line] = tail.out
    when, type_, source, *rest = line.split(" ")
    assert (type_, source) == ("com.example.order.placed", "/ops")
    assert when.startswith(event.received_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert rest == ["subject=order-3", "id=tail-1", "correlation=conv-3", f"event={event.pk}"]


@pytest.mark.django_db(transaction=True)
def test_tail_with_a_type_skips_other_types_and_can_print_json(tails):
    tail = tails("--type", "com.example.wanted", "--count", "1", "--json")
    tail.wait_ready()

    emit("com.example.unwanted", "--source", "/ops")
    emit("com.example.wanted", "--source", "/ops", "--data", '{"n": 2}')

    assert tail.finish() == 0
    [line] = tail.out
    printed = json.loads(line)
    assert printed["cloudevent"]["type"] == "com.example.wanted"
    assert printed["cloudevent"]["data"] == {"n": 2}
    assert printed["id"] == Event.objects.get(type="com.example.wanted").pk


@pytest.mark.django_db(transaction=True)
def test_tail_reads_without_a_consumer_group_and_stops_cleanly_on_sigterm(tails):
    tail = tails()
    tail.wait_ready()
    emit("com.example.ping", "--source", "/ops")
    wait_until(lambda: tail.out, timeout=60, message="tail to print the event")

    tail.process.send_signal(signal.SIGTERM)

    assert tail.finish() == 0
    redis = redis_client()
    groups = {
        group["name"]
        for partition in range(bus.partitions())
        if redis.exists(stream := bus.stream_key(partition))
        for group in redis.xinfo_groups(stream)
    }
    assert groups <= {settings.SIGNALBOX["BUS_GROUP"]}
