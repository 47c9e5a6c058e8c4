"""The bus: partitioned Redis Streams read by a consumer group, against the real Redis.

Each test gets its own key prefix, so the session's running stack (if any) never reads
these streams.
"""

from __future__ import annotations

import contextlib
import uuid
import zlib

import pytest

from tests.factories import cloudevent, definition, log_step
from tests.waiting import wait_until
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events import bus
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.infra.redis_client import client, key
from workflows.runs.matching import dead_letter_bus_entry, ingest_event, match_event
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def bus_settings(settings):
    """A private key prefix and a small, known bus configuration for one test."""
    settings.REDIS_PREFIX = f"{settings.REDIS_PREFIX}-bus-{uuid.uuid4().hex[:8]}"
    settings.SIGNALBOX = {
        **settings.SIGNALBOX,
        "BUS_PARTITIONS": 4,
        "BUS_CLAIM_IDLE_MS": 200,
        "BUS_MAX_DELIVERIES": 3,
    }
    yield settings
    redis = client()
    for name in redis.scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000):
        redis.delete(name)


def unsaved(ce_id: str = "e-1", subject: str = "", **extensions) -> Event:
    return Event(source="/tests", ce_id=ce_id, type="t", subject=subject, extensions=extensions)


def stored_event(**attributes) -> Event:
    event, created = ingest_event(envelope=from_structured(cloudevent(**attributes)))
    assert created
    return event


def published(count: int, **attributes) -> list[Event]:
    """Store `count` events and put each on the bus (as the commit hook would)."""
    events = [stored_event(**attributes) for _ in range(count)]
    for event in events:
        assert bus.publish(event)
    return events


def pending_count(consumer: bus.Consumer) -> int:
    return sum(consumer.redis.xpending(s, consumer.group)["pending"] for s in consumer.streams)


# --- partitions -------------------------------------------------------------------------------


def test_the_partitionkey_extension_chooses_the_partition_over_subject_and_id(bus_settings):
    bus_settings.SIGNALBOX = {**bus_settings.SIGNALBOX, "BUS_PARTITIONS": 64}
    keyed = [
        unsaved(f"id-{n}", subject=f"subject-{n}", partitionkey="customer-7") for n in range(20)
    ]

    assert len({bus.partition_for(e) for e in keyed}) == 1
    assert bus.partition_for(keyed[0]) == zlib.crc32(b"customer-7") % 64


def test_without_a_partitionkey_the_subject_chooses_and_else_the_event_id(bus_settings):
    bus_settings.SIGNALBOX = {**bus_settings.SIGNALBOX, "BUS_PARTITIONS": 64}
    same_subject = [unsaved(f"id-{n}", subject="order-1") for n in range(20)]
    no_subject = [unsaved(f"id-{n}") for n in range(200)]

    assert len({bus.partition_for(e) for e in same_subject}) == 1
    assert bus.partition_for(same_subject[0]) == zlib.crc32(b"order-1") % 64
    assert bus.partition_for(unsaved("id-3")) == bus.partition_for(unsaved("id-3", subject=""))
    assert len({bus.partition_for(e) for e in no_subject}) > 32  # ids spread out


@pytest.mark.parametrize("count", [1, 3, 16])
def test_the_number_of_partitions_is_configurable(bus_settings, count):
    bus_settings.SIGNALBOX = {**bus_settings.SIGNALBOX, "BUS_PARTITIONS": count}
    chosen = {bus.partition_for(unsaved(f"id-{n}")) for n in range(400)}

    assert chosen == set(range(count))
    assert bus.Consumer("reader").streams == [bus.stream_key(p) for p in range(count)]


def test_publish_appends_to_the_chosen_partition_and_marks_the_event_published(bus_settings):
    event = stored_event(subject="order-9")
    assert event.published_at is None

    assert bus.publish(event)

    stream = bus.stream_key(bus.partition_for(event))
    assert stream == key("bus", zlib.crc32(b"order-9") % 4)
    [(_entry_id, fields)] = client().xrange(stream)
    assert fields == {"event": str(event.pk), "type": event.type}
    event.refresh_from_db()
    assert event.published_at is not None


# --- consumer group ---------------------------------------------------------------------------


def test_two_consumers_in_one_group_share_the_entries_without_duplicates(bus_settings):
    events = published(40)
    first, second = bus.Consumer("first"), bus.Consumer("second")
    seen: dict[str, list[int]] = {"first": [], "second": []}

    def drain(consumer: bus.Consumer) -> int:
        got = list(consumer.read(block_ms=10, count=3))
        for delivery in got:
            seen[consumer.name].append(delivery.event_id)
            consumer.ack(delivery)
        return len(got)

    while drain(first) + drain(second):
        pass

    assert seen["first"] and seen["second"]
    assert not set(seen["first"]) & set(seen["second"])
    assert sorted(seen["first"] + seen["second"]) == sorted(e.pk for e in events)
    assert pending_count(first) == 0


def test_entries_of_a_consumer_that_died_are_reclaimed_by_another_after_the_idle_time(
    bus_settings,
):
    events = published(6)
    dead = bus.Consumer("dies-before-acking")
    taken = list(dead.read(block_ms=10))
    assert len(taken) == 6  # read, never acknowledged: the consumer "died"
    survivor = bus.Consumer("survivor")

    assert list(survivor.reclaim(idle_ms=60_000)) == []  # not idle long enough yet
    assert list(survivor.read(block_ms=10)) == []  # and not offered as new entries either

    reclaimed: list[bus.Delivery] = []

    def all_reclaimed():
        reclaimed.extend(survivor.reclaim(idle_ms=bus_settings.SIGNALBOX["BUS_CLAIM_IDLE_MS"]))
        return len(reclaimed) >= 6

    wait_until(all_reclaimed, timeout=10, message="the dead consumer's entries to be reclaimed")
    assert sorted(d.event_id for d in reclaimed) == sorted(e.pk for e in events)
    assert {d.deliveries for d in reclaimed} == {2}
    for delivery in reclaimed:
        survivor.handle(delivery, lambda _id: None, max_deliveries=3, on_poison=pytest.fail)
    assert pending_count(survivor) == 0


def test_an_entry_delivered_too_many_times_becomes_a_bus_dead_letter_and_is_acked(bus_settings):
    [event] = published(1)
    consumer = bus.Consumer("unlucky")
    attempts: list[int] = []

    def failing_match(event_id: int) -> None:
        attempts.append(event_id)
        raise RuntimeError("matching keeps failing")

    def poison(delivery: bus.Delivery, reason: str) -> None:
        dead_letter_bus_entry(
            event_id=delivery.event_id,
            reason=reason,
            stream=delivery.stream,
            entry_id=delivery.entry_id,
        )

    # What the consumer loop does, with no idle time: read, fail, reclaim, fail, ...
    for _round in range(10):
        deliveries = [*consumer.reclaim(idle_ms=0), *consumer.read(block_ms=10)]
        if not deliveries:
            break
        for delivery in deliveries:
            with contextlib.suppress(RuntimeError):  # left pending, as the loop leaves it
                consumer.handle(delivery, failing_match, max_deliveries=3, on_poison=poison)

    assert attempts == [event.pk] * 3
    letter = DeadLetter.objects.get(kind="bus")
    assert letter.event_id == event.pk
    assert letter.reason == "delivered 4 times without success"
    assert letter.payload["event_id"] == event.pk
    assert letter.payload["stream"] == bus.stream_key(bus.partition_for(event))
    assert pending_count(consumer) == 0
    assert list(consumer.reclaim(idle_ms=0)) == []


# --- retention --------------------------------------------------------------------------------


def test_streams_are_trimmed_to_about_the_retention_while_the_database_keeps_every_event(
    bus_settings, django_capture_on_commit_callbacks
):
    bus_settings.SIGNALBOX = {**bus_settings.SIGNALBOX, "BUS_PARTITIONS": 1, "BUS_RETENTION": 50}
    redis = client()
    # Approximate MAXLEN trims whole stream nodes only, so a stream may keep up to one
    # node's worth of entries above the retention; it never drops below it.
    node = int(redis.config_get("stream-node-max-entries")["stream-node-max-entries"])
    total = 50 + 3 * node

    with django_capture_on_commit_callbacks(execute=True):
        for n in range(total):
            ingest_event(envelope=from_structured(cloudevent(id=f"kept-{n}")))

    length = redis.xlen(bus.stream_key(0))
    assert 50 <= length <= 50 + node < total
    assert Event.objects.filter(ce_id__startswith="kept-").count() == total
    assert not Event.objects.filter(published_at__isnull=True).exists()
    newest = redis.xrevrange(bus.stream_key(0), count=1)[0][1]["event"]
    assert int(newest) == Event.objects.get(ce_id=f"kept-{total - 1}").pk


# --- at-least-once delivery, one run ----------------------------------------------------------


def test_a_redelivered_entry_starts_no_second_run(bus_settings):
    put_workflow(slug="once", raw=definition(log_step("only")))
    workflow = publish_workflow(slug="once").workflow
    [event] = published(1)
    crashed = bus.Consumer("crashes-after-matching")
    [delivery] = crashed.read(block_ms=10)
    match_event(event_id=delivery.event_id)  # matched, then died before the ack
    assert Run.objects.filter(event=event).count() == 1
    bus.publish(event)  # and the relay appended the same event once more

    survivor = bus.Consumer("survivor")
    redelivered = [
        *wait_until(
            lambda: list(survivor.reclaim(idle_ms=bus_settings.SIGNALBOX["BUS_CLAIM_IDLE_MS"])),
            timeout=10,
            message="the unacknowledged entry to be reclaimed",
        ),
        *survivor.read(block_ms=10),
    ]
    started = []
    for each in redelivered:
        survivor.handle(
            each,
            lambda event_id: started.extend(match_event(event_id=event_id)),
            max_deliveries=3,
            on_poison=pytest.fail,
        )

    assert [d.event_id for d in redelivered] == [event.pk, event.pk]
    assert started == []
    assert list(Run.objects.filter(event=event).values_list("workflow", flat=True)) == [workflow.pk]
    assert pending_count(survivor) == 0
