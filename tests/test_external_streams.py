"""External Redis streams: a producer that only speaks Redis XADDs, Signalbox ingests."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection

from orchestrator.embedded_redis import free_port
from tests.factories import definition, log_step
from tests.waiting import wait_until
from workflows.events import external_streams
from workflows.events.external_streams import GROUP, Source, StreamReader, default_source
from workflows.events.models import DeadLetter, Event, EventSchema, EventType, StreamSource
from workflows.infra.redis_client import client, key
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)


def publish(api, slug: str, body: dict) -> None:
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def stream_key() -> str:
    """A stream under this test run's Redis prefix, so parallel runs never share one."""
    return key("external", uuid.uuid4().hex[:8])


def add_source(name: str, stream: str, *extra: str) -> None:
    call_command("streams", "add", name, stream, *extra)


def pending(stream: str) -> int:
    return client().xpending(stream, GROUP)["pending"]


def event_from(source: str, ce_id: str) -> Event:
    return wait_until(
        lambda: Event.objects.filter(source=source, ce_id=ce_id).first(),
        message=f"event {source}#{ce_id}",
    )


def test_flat_fields_xadded_to_an_external_stream_start_a_run(api):
    publish(api, "restock", definition(log_step("note"), event="com.example.stock.low"))
    stream = stream_key()
    add_source("warehouse", stream, "--type", "com.example.stock.low")

    entry_id = client().xadd(
        stream, {"data": json.dumps({"sku": "A-1", "left": 2}), "subject": "A-1", "site": "lyon"}
    )

    event = event_from(default_source(stream), entry_id)
    run = wait_until(
        lambda: Run.objects.filter(event=event, status="succeeded").first(),
        message="the run the stream entry started",
    )
    assert run.workflow.slug == "restock"
    assert event.channel == "stream"
    assert event.type == "com.example.stock.low"  # the source's default type
    assert event.data == {"sku": "A-1", "left": 2}
    assert event.subject == "A-1"
    assert event.extensions["site"] == "lyon"
    assert event.datacontenttype == "application/json"
    wait_until(lambda: pending(stream) == 0, message="the entry to be acknowledged")


def test_a_structured_cloudevent_in_a_ce_field_keeps_its_own_attributes(api):
    publish(api, "billing", definition(log_step("bill"), event="com.example.invoice.due"))
    stream = stream_key()
    add_source("erp", stream)
    cloudevent = {
        "specversion": "1.0",
        "type": "com.example.invoice.due",
        "source": "/erp/invoices",
        "id": "inv-1001",
        "time": "2026-01-31T12:00:00Z",
        "correlationid": "customer-77",
        "data": {"amount": 12.5},
    }

    client().xadd(stream, {"ce": json.dumps(cloudevent)})

    event = event_from("/erp/invoices", "inv-1001")
    assert event.type == "com.example.invoice.due" and event.data == {"amount": 12.5}
    assert event.correlation_id == "customer-77"
    run = wait_until(lambda: Run.objects.filter(event=event).first(), message="a run")
    assert run.correlation_id == "customer-77"


def test_an_entry_sent_twice_with_the_same_id_makes_one_event_and_one_run(api):
    publish(api, "dedupe", definition(log_step("once"), event="com.example.ping"))
    stream = stream_key()
    add_source("pinger", stream, "--type", "com.example.ping")

    for _ in range(2):
        client().xadd(stream, {"id": "ping-1", "source": "/pinger", "data": "{}"})

    wait_until(
        lambda: pending(stream) == 0 and client().xinfo_groups(stream)[0]["lag"] == 0,
        message="both entries to be read and acknowledged",
    )
    event = Event.objects.get(source="/pinger", ce_id="ping-1")
    wait_until(lambda: Run.objects.filter(event=event).exists(), message="a run")
    assert Event.objects.filter(source="/pinger").count() == 1
    assert Run.objects.filter(workflow__slug="dedupe").count() == 1


def test_poison_entries_become_dead_letters_with_their_raw_fields_and_do_not_block_others(api):
    EventType.objects.create(name="com.example.reading")
    EventSchema.objects.create(
        event_type=EventType.objects.get(name="com.example.reading"),
        version=1,
        schema={
            "type": "object",
            "required": ["celsius"],
            "properties": {"celsius": {"type": "number"}},
        },
    )
    stream = stream_key()
    add_source("sensors", stream, "--type", "com.example.reading")
    producer = client()

    broken_json = producer.xadd(stream, {"ce": "{not json"})
    bad_extension = producer.xadd(stream, {"data": "{}", "Bad_Field": "x"})
    off_schema = producer.xadd(stream, {"data": json.dumps({"celsius": "warm"})})
    not_utf8 = producer.xadd(stream, {"data": b"\xff\xfe"})
    good = producer.xadd(stream, {"data": json.dumps({"celsius": 21.5})})

    event_from(default_source(stream), good)

    def four_letters():
        found = DeadLetter.objects.filter(kind="event", payload__stream=stream)
        return {d.payload["entry_id"]: d for d in found} if len(found) == 4 else None

    letters = wait_until(four_letters, message="four dead letters")
    assert "invalid JSON" in letters[broken_json].reason
    assert letters[broken_json].payload["fields"] == {"ce": "{not json"}
    assert letters[broken_json].payload["source"] == "sensors"
    assert "Bad_Field" in letters[bad_extension].reason
    assert "schema" in letters[off_schema].reason
    assert letters[off_schema].payload["problems"][0]["path"] == "/celsius"
    assert "not UTF-8" in letters[not_utf8].reason
    assert letters[not_utf8].payload["fields"]["data"] == "\\xff\\xfe"
    assert Event.objects.filter(channel="stream", source=default_source(stream)).count() == 1
    wait_until(lambda: pending(stream) == 0, message="every entry to be acknowledged")


@contextlib.contextmanager
def database_unreachable():
    """Point this thread's connection at a closed port: queries fail as when PostgreSQL
    is down (OperationalError), without disturbing the shared server."""
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def test_an_entry_stays_pending_while_the_database_is_down_and_is_ingested_afterwards():
    stream = stream_key()
    # Disabled, so the stack's bus consumer leaves this stream to the reader under test.
    row = StreamSource.objects.create(
        name="offline", stream=stream, enabled=False, default_type="com.example.offline"
    )
    reader = StreamReader("test-reader", claim_idle_ms=1, sources=[Source.of(row)])
    reader.poll(block_ms=10)  # creates the group
    entry_id = client().xadd(stream, {"data": json.dumps({"n": 1})})

    with database_unreachable(), pytest.raises(OperationalError):
        reader.poll(block_ms=100)

    assert pending(stream) == 1
    assert not Event.objects.filter(source=default_source(stream)).exists()
    wait_until(
        lambda: reader.poll(block_ms=10) and pending(stream) == 0,
        message="the pending entry to be reclaimed and ingested",
    )
    event = Event.objects.get(source=default_source(stream), ce_id=entry_id)
    assert event.data == {"n": 1}
    assert not DeadLetter.objects.filter(payload__stream=stream).exists()


def test_a_dead_consumers_pending_entry_is_reclaimed_by_another():
    stream = stream_key()
    row = StreamSource.objects.create(
        name="orphans", stream=stream, enabled=False, default_type="com.example.orphan"
    )
    external_streams.ensure_group(client(), stream)
    entry_id = client().xadd(stream, {"data": "{}"})
    # A consumer reads the entry and dies before acknowledging it.
    assert client().xreadgroup(GROUP, "ghost", {stream: ">"}, count=10)

    reader = StreamReader("survivor", claim_idle_ms=1, sources=[Source.of(row)])
    wait_until(
        lambda: reader.poll(block_ms=10) and pending(stream) == 0,
        message="the survivor to reclaim the entry",
    )

    assert Event.objects.filter(source=default_source(stream), ce_id=entry_id).exists()


def test_an_entry_that_keeps_failing_is_quarantined_after_its_delivery_limit(monkeypatch):
    stream = stream_key()
    row = StreamSource.objects.create(
        name="flaky", stream=stream, enabled=False, default_type="com.example.flaky"
    )
    reader = StreamReader(
        "flaky-reader", claim_idle_ms=1, max_deliveries=3, sources=[Source.of(row)]
    )
    reader.poll(block_ms=10)
    entry_id = client().xadd(stream, {"data": "{}"})

    def broken(**_):
        raise RuntimeError("a bug while ingesting")

    monkeypatch.setattr("workflows.events.intake.ingest_event", broken)
    letter = wait_until(
        lambda: (
            reader.poll(block_ms=10) is not None
            and DeadLetter.objects.filter(payload__entry_id=entry_id).first()
        ),
        message="the entry to be quarantined",
    )

    assert letter.reason == "failed 3 times: RuntimeError: a bug while ingesting"
    assert letter.payload["fields"] == {"data": "{}"}
    assert pending(stream) == 0


def test_streams_command_adds_lists_and_removes_a_source(capsys):
    stream = stream_key()

    add_source("crm", stream, "--type", "com.example.lead")
    call_command("streams", "list")
    listed = capsys.readouterr().out

    assert "crm" in listed and stream in listed and "type=com.example.lead" in listed
    assert "pending 0" in listed
    with pytest.raises(CommandError, match="already exists"):
        add_source("crm", stream_key())
    with pytest.raises(CommandError, match="already read by source 'crm'"):
        add_source("crm-2", stream)
    with pytest.raises(CommandError, match="letters, digits"):
        add_source("not a name", stream_key())
    call_command("streams", "remove", "crm")
    assert not StreamSource.objects.filter(name="crm").exists()
    with pytest.raises(CommandError, match="no stream source named 'crm'"):
        call_command("streams", "remove", "crm")


def test_streams_add_reads_only_entries_added_after_it_unless_asked_for_the_start():
    old_stream, whole_stream = stream_key(), stream_key()
    client().xadd(old_stream, {"data": "{}"})
    client().xadd(whole_stream, {"data": "{}"})

    add_source("from-now", old_stream)
    add_source("from-start", whole_stream, "--from-start")

    assert client().xinfo_groups(old_stream)[0]["lag"] == 0
    assert client().xinfo_groups(whole_stream)[0]["lag"] == 1


def test_an_entry_claiming_a_signalbox_source_is_refused():
    with pytest.raises(external_streams.InvalidEvent, match="reserved"):
        external_streams.envelope_from_fields(
            {"source": "/signalbox/runs", "id": "run-1-succeeded", "type": "signalbox.run.x"},
            stream="s",
            entry_id="1-0",
        )
