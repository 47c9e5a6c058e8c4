"""The bus consumer matches the entries of one read together: a fixed number of queries
per read (not per event, not per workflow), one XACK, and a failing entry left pending on
its own. The subscription lookup is an index scan by event type at 10,000 workflows."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import cloudevent, definition, log_step
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import TriggerSubscription
from workflows.events import bus
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.infra.redis_client import client
from workflows.runs import matching as event_services
from workflows.runs.matching import dead_letter_bus_entry, ingest_event, match_events
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

QUIET = "com.example.nobody.listens"
PLACED = "com.example.order.placed"


@pytest.fixture
def bus_settings(settings):
    settings.REDIS_PREFIX = f"{settings.REDIS_PREFIX}-match-{uuid.uuid4().hex[:8]}"
    settings.SIGNALBOX = {**settings.SIGNALBOX, "BUS_PARTITIONS": 2, "BUS_MAX_DELIVERIES": 2}
    yield settings
    redis = client()
    for name in redis.scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000):
        redis.delete(name)


def stored(count: int, type_: str = PLACED, **attributes) -> list[Event]:
    return [
        ingest_event(envelope=from_structured(cloudevent(type_, **attributes)), publish=False)[0]
        for _ in range(count)
    ]


def publish(slug: str, **trigger) -> None:
    raw = definition(log_step("only"))
    raw["triggers"] = [{"event": PLACED, **trigger}]
    put_workflow(slug=slug, raw=raw)
    publish_workflow(slug=slug)


def queries_to_match(events: list[Event]) -> CaptureQueriesContext:
    with CaptureQueriesContext(connection) as captured:
        outcome = match_events(event_ids=[e.pk for e in events])
    assert outcome.done == {e.pk for e in events} and not outcome.failed
    return captured


def test_matching_a_read_takes_the_same_few_queries_for_one_event_or_forty():
    for n in range(30):  # workflows listening to other types are never read
        put_workflow(slug=f"other-{n}", raw=definition(log_step("only"), event=f"other.{n}"))
        publish_workflow(slug=f"other-{n}")
    one = queries_to_match(stored(1, QUIET))
    forty = queries_to_match(stored(40, QUIET))

    assert len(one) == len(forty) <= 4, [q["sql"] for q in forty]
    assert not any(
        "workflows_workflow" in q["sql"]
        for q in forty.captured_queries
        if "subscription" not in q["sql"]
    )
    assert Event.objects.filter(matched_at__isnull=True).count() == 0


def test_subscriptions_are_read_once_per_read_and_definitions_are_not_read_again():
    publish("plain")
    publish("filtered", filter="event.data.amount > 1000")
    events = stored(10)
    captured = queries_to_match(events)

    sqls = [q["sql"] for q in captured.captured_queries]
    assert sum("workflows_triggersubscription" in s for s in sqls) == 1
    assert sum(s.startswith("UPDATE") and "matched_at" in s for s in sqls) == 1
    # The versions came with the subscriptions; their definitions are parsed once, not read.
    assert not any(s.startswith("SELECT") and 'FROM "workflows_workflowversion"' in s for s in sqls)
    runs = Run.objects.filter(event__in=events)
    assert sorted(runs.values_list("workflow__slug", flat=True)) == ["plain"] * 10


def test_a_repeated_event_in_one_read_starts_one_run():
    publish("once")
    [event] = stored(1)
    outcome = match_events(event_ids=[event.pk, event.pk])
    assert outcome.done == {event.pk}
    assert len(outcome.started) == 1
    assert match_events(event_ids=[event.pk]).started == []  # a later re-delivery: nothing
    assert Run.objects.filter(event=event).count() == 1


def test_an_event_missing_from_the_store_is_settled_and_the_others_are_matched():
    publish("present")
    [event] = stored(1)
    outcome = match_events(event_ids=[10**12, event.pk])
    assert outcome.done == {10**12, event.pk}
    assert [r.event_id for r in outcome.started] == [event.pk]


@pytest.mark.parametrize("heard", [False, True], ids=["one-by-one", "read-at-once-first"])
def test_a_failing_entry_stays_pending_alone_and_is_dead_lettered_alone(
    bus_settings, monkeypatch, heard
):
    publish("flaky")
    events = stored(5)
    for event in events:
        assert bus.publish(event)
    bad = events[2]
    real = event_services._start_runs

    def start_runs(event, subscriptions, *rest):
        if event.pk == bad.pk:
            raise RuntimeError("this one breaks")
        return real(event, subscriptions, *rest)

    monkeypatch.setattr(event_services, "_start_runs", start_runs)
    consumer = bus.Consumer("batch")

    def poison(delivery, reason):
        dead_letter_bus_entry(
            event_id=delivery.event_id,
            reason=reason,
            stream=delivery.stream,
            entry_id=delivery.entry_id,
        )

    def one_round() -> int:
        deliveries = [*consumer.reclaim(idle_ms=0), *consumer.read(block_ms=10)]
        return consumer.handle_batch(
            deliveries,
            lambda ids: (
                match_events(
                    event_ids=ids, heard=event_services.hearing([PLACED]) if heard else None
                ).done
            ),
            max_deliveries=2,
            on_poison=poison,
        )

    assert one_round() == 4
    pending = [
        p["message_id"]
        for stream in consumer.streams
        for p in consumer.redis.xpending_range(stream, consumer.group, "-", "+", 10)
    ]
    assert len(pending) == 1
    assert set(Run.objects.values_list("event_id", flat=True)) == {
        e.pk for e in events if e.pk != bad.pk
    }
    bad.refresh_from_db()
    assert bad.matched_at is None

    assert one_round() == 0  # second delivery fails again
    assert one_round() == 1  # third: over the limit, dead-lettered and acknowledged
    letter = DeadLetter.objects.get(kind="bus")
    assert letter.event_id == bad.pk
    assert not any(
        consumer.redis.xpending(stream, consumer.group)["pending"] for stream in consumer.streams
    )
    bad.refresh_from_db()
    assert bad.matched_at is not None  # the dead letter holds it; the relay leaves it alone


def test_the_subscription_lookup_reads_the_event_type_index_at_ten_thousand_workflows():
    publish("seed")
    version = TriggerSubscription.objects.get(workflow__slug="seed").version
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_workflow (slug, name, draft, draft_updated_by, draft_revision,
                created_at, updated_at)
            SELECT 'many-' || g, 'many', '{}'::jsonb, '', 0, now(), now()
            FROM generate_series(1, 10000) AS g
            """
        )
        cursor.execute(
            """
            INSERT INTO workflows_triggersubscription (event_type, workflow_id, version_id)
            SELECT 'com.example.type-' || (w.id %% 500), w.id, %s
            FROM workflows_workflow w WHERE w.slug LIKE 'many-%%'
            """,
            [version.pk],
        )
        cursor.execute("ANALYZE workflows_triggersubscription")
    lookup = TriggerSubscription.objects.filter(
        event_type__in=[PLACED, "com.example.type-7"]
    ).select_related("workflow", "version")
    plan = lookup.explain()
    assert "Seq Scan on workflows_triggersubscription" not in plan, plan
    assert "Index" in plan and "triggersubscription" in plan, plan
    assert lookup.count() == 1 + 20


def test_a_filter_shared_by_many_workflows_is_evaluated_once_per_event(monkeypatch):
    for n in range(5):
        publish(f"shared-{n}", filter="event.data.order > 1000")
    publish("own", filter="event.subject == 'nope'")
    calls: list[str] = []
    real = event_services.evaluate

    def counting(expression, context, **kwargs):
        calls.append(expression)
        return real(expression, context, **kwargs)

    monkeypatch.setattr(event_services, "evaluate", counting)
    events = stored(3)
    outcome = match_events(event_ids=[e.pk for e in events])

    assert outcome.started == [] and outcome.done == {e.pk for e in events}
    assert sorted(calls) == sorted(
        ["event.data.order > 1000", "event.subject == 'nope'"] * len(events)
    )


def test_entries_of_types_nobody_listens_to_are_settled_without_loading_their_events(
    bus_settings,
):
    from workflows.management.commands.consume_bus import settle_unheard

    publish("listener")
    quiet, heard = stored(3, QUIET), stored(2)
    for event in quiet + heard:
        assert bus.publish(event)
    consumer = bus.Consumer("unheard")
    deliveries = list(consumer.read(block_ms=10))
    assert {d.type for d in deliveries} == {QUIET, PLACED}

    with CaptureQueriesContext(connection) as captured:
        rest, hearing = settle_unheard(consumer, deliveries)

    assert sorted(d.event_id for d in rest) == sorted(e.pk for e in heard)
    sqls = [q["sql"] for q in captured.captured_queries]
    # Which types are listened to, and (in the same round trip) the events of the
    # subscribed ones, for matching; then the UPDATE marking the others matched.
    assert len(sqls) == 3, sqls
    assert set(hearing.events) == {e.pk for e in heard}  # the unheard ones are not loaded
    assert Event.objects.filter(pk__in=[e.pk for e in quiet], matched_at__isnull=True).count() == 0
    assert Event.objects.filter(pk__in=[e.pk for e in heard], matched_at__isnull=True).count() == 2
    pending = sum(consumer.redis.xpending(s, consumer.group)["pending"] for s in consumer.streams)
    assert pending == len(heard)  # only the heard entries wait for matching


def test_a_type_a_run_waits_for_is_not_settled_unheard(bus_settings):
    from datetime import timedelta

    from django.utils import timezone

    from workflows.management.commands.consume_bus import settle_unheard
    from workflows.runs.models import EventWaiter, StepRun

    waiting_type = "com.example.awaited"
    assert event_services.listened_types([waiting_type, QUIET]) == set()
    publish("waiter-host")
    [trigger] = stored(1)
    match_events(event_ids=[trigger.pk])
    run = Run.objects.get(event=trigger)
    EventWaiter.objects.create(
        step_run=StepRun.objects.create(run=run, step_id="wait", kind="wait_for_event"),
        run=run,
        event_type=waiting_type,
        expires_at=timezone.now() + timedelta(minutes=5),
    )
    assert event_services.listened_types([waiting_type, QUIET]) == {waiting_type}
    [awaited] = stored(1, waiting_type)
    assert bus.publish(awaited)
    consumer = bus.Consumer("waits")
    deliveries = list(consumer.read(block_ms=10))
    rest, _heard = settle_unheard(consumer, deliveries)
    assert [d.event_id for d in rest] == [awaited.pk]


@pytest.mark.parametrize("vendor", ["postgresql", "other"])
def test_hearing_names_the_subscribed_the_awaited_and_the_unschemed_run_types(vendor, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from workflows.events.models import EventType
    from workflows.runs.models import EventWaiter, StepRun

    publish("hearing-host")
    [trigger] = stored(1)
    match_events(event_ids=[trigger.pk])
    run = Run.objects.get(event=trigger)
    now = timezone.now()
    for event_type, expires in (("com.example.awaited", 5), ("com.example.lapsed", -5)):
        EventWaiter.objects.create(
            step_run=StepRun.objects.create(run=run, step_id=event_type, kind="wait_for_event"),
            run=run,
            event_type=event_type,
            expires_at=now + timedelta(minutes=expires),
        )
    schemed = sorted(event_services.RUN_EVENT_TYPES)[0]
    EventType.objects.create(name=schemed)
    # "other": the statement as written for SQLite (a placeholder per value), run here.
    if vendor == "other":
        monkeypatch.setattr(connection, "vendor", "sqlite")
    asked = [PLACED, "com.example.awaited", "com.example.lapsed", QUIET]

    heard = event_services.hearing(asked)
    quietly = event_services.hearing(asked, subscriptions=False)

    assert heard.subscribed == {PLACED}
    assert heard.waited == quietly.waited == {"com.example.awaited"}
    assert heard.unschemed_run_types == event_services.RUN_EVENT_TYPES - {schemed}
    assert heard.listened == {PLACED, "com.example.awaited"}
    assert quietly.subscribed == set()
    assert event_services.hearing([]).unschemed_run_types == heard.unschemed_run_types


def nested(depth: int) -> dict:
    value: dict = {"bottom": True}
    for _ in range(depth):
        value = {"down": value}
    return value


@pytest.mark.parametrize(
    "data",
    [
        {"amount": 10**30},
        {"amount": 5, "noise": [-(10**40)]},
        {"amount": 5, "noise": nested(200)},
    ],
    ids=["huge-integer", "huge-integer-elsewhere", "deep-nesting"],
)
def test_event_data_cel_cannot_hold_fails_only_the_filters_that_read_it(bus_settings, data):
    # A filter that fails does not match, as documented: the entry is matched and acked at
    # the first delivery, never retried into a dead letter.
    publish("reads-amount", filter="event.data.amount > 1")
    publish("reads-type", filter="event.type == 'com.example.order.placed'")
    publish("unfiltered")
    [event] = stored(1, data=data)
    assert bus.publish(event)
    consumer = bus.Consumer("poison")

    deliveries = consumer.read(block_ms=10)
    handled = consumer.handle_batch(
        deliveries,
        lambda ids: match_events(event_ids=ids).done,
        max_deliveries=2,
        on_poison=pytest.fail,
    )

    assert handled == 1
    assert not any(
        consumer.redis.xpending(stream, consumer.group)["pending"] for stream in consumer.streams
    )
    assert not DeadLetter.objects.exists()
    started = set(Run.objects.filter(event=event).values_list("workflow__slug", flat=True))
    reads_amount = isinstance(data["amount"], int) and data["amount"] < 2**63
    assert started == {"reads-type", "unfiltered"} | ({"reads-amount"} if reads_amount else set())
