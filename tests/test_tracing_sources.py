"""Ingest spans for the events that do not come by POST /api/v1/events: a webhook delivery
continues the sender's `traceparent` header, a broker message the trace its CloudEvents
distributed-tracing extension names, and a schedule tick starts a new trace. Each bus entry
names its ingest span, so the delivery and the run hang under it.

In this process, on purpose (the HTTP path's test, tests/test_tracing.py, runs every process
for real): tracing is switched on here with a real OTLP exporter sending to a loopback
receiver; the events go onto a bus under a Redis prefix of this test's own, and are matched
here as consume_bus matches them, so no other stack's consumer can take them first."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import cloudevent, definition, log_step
from tests.otlp_receiver import OtlpReceiver
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events import bus
from workflows.events.connectors.base import Message
from workflows.events.connectors.intake import ingest_batch
from workflows.events.models import Event, Schedule
from workflows.events.schedules import fire
from workflows.events.webhooks import create_webhook
from workflows.infra import tracing
from workflows.infra.redis_client import client
from workflows.runs.matching import match_events
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db  # uncommitted: no other process sees these rows

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
SERVER, CONSUMER, INTERNAL = 2, 5, 1  # OTLP span kinds (0 is unspecified)


@pytest.fixture(scope="module")
def receiver():
    server = OtlpReceiver()
    yield server
    server.close()


@pytest.fixture
def private_bus(settings):
    """A bus of this test's own: the shared stack's consumer reads another prefix."""
    settings.REDIS_PREFIX = f"{settings.REDIS_PREFIX}-sources-{uuid.uuid4().hex[:8]}"
    yield
    keys = [bus.stream_key(p) for p in range(bus.partitions())]
    client().delete(*keys)


@pytest.fixture
def traced(receiver, settings, monkeypatch, private_bus):
    """Tracing on in this process, exporting over OTLP/HTTP to the loopback receiver."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    settings.SIGNALBOX_TRACING = "otlp"
    tracing.reset_for_tests()
    assert tracing.enabled()
    try:
        yield receiver
    finally:
        tracing.shutdown()
        tracing.reset_for_tests()  # the next hook decides again (off, as configured)


def exported(receiver: OtlpReceiver):
    tracing.flush()  # synchronous: the receiver holds every span ended so far
    return receiver


def published(slug: str) -> str:
    event_type = f"com.example.sources.{slug}"
    put_workflow(slug=slug, raw=definition(log_step("note"), event=event_type))
    publish_workflow(slug=slug)
    return event_type


def bus_entry(event: Event) -> dict:
    """The fields of the event's entry on the (private) bus."""
    for partition in range(bus.partitions()):
        for _entry_id, fields in client().xrange(bus.stream_key(partition)):
            if int(fields["event"]) == event.pk:
                return fields
    raise AssertionError(f"event {event.pk} is not on the bus")


def matched(event: Event) -> Run:
    """What consume_bus does with the entry: match it, under the span the entry names."""
    trace = bus_entry(event).get("tp", "")
    outcome = match_events(event_ids=[event.pk], traces={event.pk: trace} if trace else None)
    assert outcome.done == {event.pk} and not outcome.failed
    [run] = outcome.started
    return run


def chain_under(receiver: OtlpReceiver, ingest, run: Run) -> None:
    """The run's span hangs under the delivery, and that under the ingest span."""
    by_id = {s.span_id: s for s in receiver.spans}
    run_span = by_id[run.traceparent.split("-")[2]]
    delivery = by_id[run_span.parent_span_id]
    assert (run_span.name, delivery.name) == ("signalbox.run", "signalbox.deliver")
    assert delivery.parent_span_id == ingest.span_id
    assert {run_span.trace_id, delivery.trace_id} == {ingest.trace_id}


def names(traceparent: str, span) -> bool:
    """Whether the W3C traceparent is that span's (whatever its flags)."""
    return traceparent.split("-")[1:3] == [span.trace_id, span.span_id]


def one_ingest(receiver: OtlpReceiver, **attributes):
    spans = receiver.named("signalbox.ingest", **attributes)
    assert len(spans) == 1, spans
    return spans[0]


def test_a_webhook_delivery_continues_the_senders_traceparent_and_its_run_hangs_under_it(
    traced, client, django_capture_on_commit_callbacks
):
    event_type = published("hooked")
    create_webhook(slug="traced-hook", event_type=event_type, auth_mode="none")
    with django_capture_on_commit_callbacks(execute=True):  # the bus append, after commit
        answer = client.post(
            "/hooks/traced-hook",
            data=json.dumps({"order": 7}),
            content_type="application/json",
            headers={"traceparent": INCOMING, "Idempotency-Key": "hook-1"},
        )
    assert answer.status_code == 202, answer.content
    event = Event.objects.get(pk=answer.json()["id"])
    run = matched(event)

    ingest = one_ingest(exported(traced), **{"signalbox.webhook": "traced-hook"})
    assert ingest.parent_span_id == CALLER_SPAN and ingest.trace_id == TRACE_ID
    assert ingest.kind == SERVER
    assert ingest.attributes["signalbox.channel"] == "webhook"
    assert ingest.attributes["signalbox.events.stored"] == 1
    assert bus_entry(event)["tp"].split("-")[2] == ingest.span_id
    assert event.extensions["traceparent"] == INCOMING  # the sender's, kept as sent
    chain_under(traced, ingest, run)


def test_a_webhook_delivery_without_a_traceparent_starts_a_trace_the_event_carries(
    traced, client, django_capture_on_commit_callbacks
):
    event_type = published("hooked-fresh")
    create_webhook(slug="fresh-hook", event_type=event_type, auth_mode="none")
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(
            "/hooks/fresh-hook", data=json.dumps({"a": 1}), content_type="application/json"
        )
    assert answer.status_code == 202, answer.content
    event = Event.objects.get(pk=answer.json()["id"])
    run = matched(event)

    ingest = one_ingest(exported(traced), **{"signalbox.webhook": "fresh-hook"})
    assert ingest.parent_span_id == ""
    assert names(event.extensions["traceparent"], ingest)
    chain_under(traced, ingest, run)


def test_a_schedule_tick_starts_a_new_trace_and_its_run_hangs_under_it(
    traced, django_capture_on_commit_callbacks
):
    event_type = published("ticking")
    Schedule.objects.create(name="traced-tick", cron="@every 1m", event_type=event_type)
    Schedule.objects.filter(name="traced-tick").update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    with django_capture_on_commit_callbacks(execute=True):
        tick = fire(Schedule.objects.get(name="traced-tick"))
    assert tick is not None
    event = Event.objects.get(source="/schedules/traced-tick")
    run = matched(event)

    ingest = one_ingest(exported(traced), **{"signalbox.schedule": "traced-tick"})
    assert ingest.parent_span_id == "" and ingest.kind == INTERNAL
    assert ingest.attributes["signalbox.channel"] == "schedule"
    assert names(event.extensions["traceparent"], ingest)
    assert bus_entry(event)["tp"].split("-")[2] == ingest.span_id
    chain_under(traced, ingest, run)


def connector_messages(event_type: str) -> list[Message]:
    """A binary-mode message whose distributed-tracing extension names the caller's span,
    and a structured one that names none."""
    return [
        Message(
            body=b'{"n": 1}',
            content_type="application/json",
            attributes={"id": "m-1", "type": event_type, "traceparent": INCOMING},
            key="orders",
            fallback_id="m-1",
        ),
        Message(
            body=json.dumps(cloudevent(event_type, id="m-2")).encode(),
            content_type="application/cloudevents+json",
            attributes={},
            key="orders",
            fallback_id="m-2",
        ),
    ]


def test_each_broker_message_gets_a_consumer_span_continuing_its_cloudevents_traceparent(traced):
    event_type = published("brokered")
    outcomes = ingest_batch(
        connector_messages(event_type),
        kind="mqtt",
        connection="traced-conn",
        default_type=event_type,
    )
    assert outcomes == ["ingested", "ingested"]
    carried = Event.objects.get(ce_id="m-1")
    plain = Event.objects.get(ce_id="m-2")
    runs = {event.ce_id: matched(event) for event in (carried, plain)}

    spans = exported(traced).named("signalbox.ingest", **{"signalbox.connection": "traced-conn"})
    by_event = {s.attributes["cloudevents.event_id"]: s for s in spans}
    assert sorted(by_event) == ["m-1", "m-2"]
    continued, fresh = by_event["m-1"], by_event["m-2"]
    assert continued.parent_span_id == CALLER_SPAN and continued.trace_id == TRACE_ID
    assert fresh.parent_span_id == "" and fresh.trace_id != TRACE_ID
    assert {continued.kind, fresh.kind} == {CONSUMER}
    assert continued.attributes["messaging.system"] == "mqtt"
    assert carried.extensions["traceparent"] == INCOMING
    assert names(plain.extensions["traceparent"], fresh)
    for event, ingest in ((carried, continued), (plain, fresh)):
        assert bus_entry(event)["tp"].split("-")[2] == ingest.span_id
        chain_under(traced, ingest, runs[event.ce_id])


def test_with_tracing_off_a_broker_message_keeps_its_traceparent_and_its_entry_names_no_span(
    private_bus, settings
):
    settings.SIGNALBOX_TRACING = "off"
    tracing.reset_for_tests()
    event_type = published("brokered-off")
    outcomes = ingest_batch(
        connector_messages(event_type), kind="mqtt", connection="off-conn", default_type=event_type
    )
    assert outcomes == ["ingested", "ingested"]
    carried = Event.objects.get(ce_id="m-1")
    assert carried.extensions["traceparent"] == INCOMING
    assert "traceparent" not in Event.objects.get(ce_id="m-2").extensions
    assert "tp" not in bus_entry(carried)
    assert not tracing.enabled()
