"""The overview's figures and series, and the demo traffic that feeds them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from dashboard import metrics
from tests.factories import definition, log_step
from tests.runs_here import drive, publish, trigger
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.demo import traffic as demo_traffic
from workflows.events import bus
from workflows.events.models import DeadLetter, Event
from workflows.infra.redis_client import client
from workflows.runs import gauges
from workflows.runs.matching import match_event
from workflows.runs.models import Run


@pytest.fixture
def outcomes(db):
    """Two runs that succeed and one that fails."""
    publish("orders", definition(log_step("received"), log_step("done", after=("received",))))
    publish(
        "refunds",
        definition({"id": "boom", "kind": "fail", "config": {"message": "no"}}, event="com.x.r"),
    )
    ok = [drive(trigger("orders", {"n": n})) for n in range(2)]
    bad = drive(trigger("refunds", type_="com.x.r"))
    assert [r.status for r in ok] == ["succeeded", "succeeded"] and bad.status == "failed"
    return ok, bad


def test_the_overview_counts_events_runs_failures_and_step_latency(outcomes):
    data = metrics.compute_overview("15m")

    figures = data.figures
    assert figures["runs_started"] == 3
    assert (figures["runs_succeeded"], figures["runs_failed"]) == (2, 1)
    assert figures["failure_rate"] == pytest.approx(33.3, abs=0.1)
    assert figures["events_in_window"] == 3  # the triggers; run events are counted as runs
    assert figures["steps_finished"] == 5
    assert 0 <= figures["latency_p50_ms"] <= figures["latency_p95_ms"]
    assert len(data.times) == 15 and data.bucket == 60
    assert sum(data.runs_per_minute["failed"]) > 0
    assert set(data.event_types) == {"com.example.order.placed", "com.x.r"}
    assert any(v for v in data.events_per_second["com.example.order.placed"])
    assert data.latency_ms["p95"][-1] is not None
    json.dumps(data.as_dict())  # what the page embeds


def test_the_overview_leaves_out_runs_of_workflows_the_user_may_not_see(outcomes):
    hidden = frozenset(
        Run.objects.filter(workflow__slug="refunds").values_list("workflow", flat=True)
    )

    figures = metrics.compute_overview("15m", hidden=hidden).figures

    assert (figures["runs_started"], figures["runs_failed"]) == (2, 0)
    assert figures["steps_finished"] == 4


def test_queue_depth_bus_lag_and_dead_letters_are_read_from_redis_and_the_store(db):
    queue = gauges.celery_queue_key()
    assert queue == f"{settings.REDIS_PREFIX}:celery:signalbox"
    redis = client()
    stream = bus.stream_key(1)
    try:
        redis.rpush(queue, "a", "b", "c")
        bus.ensure_groups(redis, settings.SIGNALBOX["BUS_GROUP"])
        redis.xadd(stream, {"event": 1})
        redis.xadd(stream, {"event": 2})
        DeadLetter.objects.create(kind="event", reason="test")

        figures = metrics.compute_overview("15m").figures
        partition = next(p for p in gauges.bus_partitions() if p.partition == 1)

        assert figures["queue_depth"] == 3
        assert partition.lag >= 2 and partition.length >= 2 and partition.pending == 0
        assert figures["bus_lag"] >= 2
        assert figures["dead_letters"] == 1
    finally:
        redis.delete(queue, stream)


def test_the_cache_computes_once_for_many_callers():
    calls = []
    cache = metrics.TTLCache()

    values = [cache.get("k", 60, lambda: calls.append(1) or len(calls)) for _ in range(5)]

    assert values == [1] * 5 and len(calls) == 1


# --- demo traffic -------------------------------------------------------------------------------
@pytest.fixture
def demo_off(db):
    demo_traffic.switch(on=False, by="tests")
    yield
    demo_traffic.switch(on=False, by="tests")


def test_demo_traffic_is_off_by_default_and_then_sends_nothing(demo_off):
    assert not demo_traffic.state().on
    assert demo_traffic.tick() == 0
    assert not Event.objects.exists()


def test_switched_on_demo_traffic_sends_sample_events_at_its_rate_and_expires(demo_off):
    demo_traffic.switch(on=True, by="ops")
    state = demo_traffic.state()
    assert state.on and state.by == "ops"
    assert 0 < state.seconds_left <= demo_traffic.DEMO_TTL_SECONDS
    last = float(client().get(demo_traffic._last_key()))

    sent = demo_traffic.tick(rng=random.Random(7), now=last + 3.0)

    assert sent == int(3.0 * demo_traffic.RATE)
    events = list(Event.objects.order_by("id"))
    assert len(events) == sent and {e.channel for e in events} == {"demo"}
    assert {e.type for e in events} <= {"com.example.order.placed", "com.example.payment.requested"}
    # Nothing more is due at the same moment; a long pause is capped.
    assert demo_traffic.tick(rng=random.Random(7), now=last + 3.0) == 0
    assert demo_traffic.due(100.0, 0.0) == demo_traffic.MAX_PER_TICK


DEMO = Path(__file__).resolve().parent.parent / "workflows" / "demo"


@pytest.fixture
def demo_workflows(db):
    for name in ("payments", "shipping"):
        put_workflow(slug=f"demo-{name}", raw=json.loads((DEMO / f"{name}.json").read_text()))
        publish_workflow(slug=f"demo-{name}")


def payment(amount: float) -> Run:
    return trigger(
        "demo-payments",
        {"order": 1, "amount": amount, "currency": "EUR"},
        type_="com.example.payment.requested",
    )


def test_a_declined_demo_payment_fails_after_three_attempts_into_a_dead_letter(demo_workflows):
    run = drive(payment(950.0))

    assert run.status == "failed"
    assert list(run.steps.filter(step_id="gateway").values_list("attempt", flat=True)) == [1, 2, 3]
    assert DeadLetter.objects.filter(run=run).exists()


def test_a_settled_demo_payment_starts_shipping_through_the_event_it_emits(demo_workflows):
    run = drive(payment(42.5))
    assert run.status == "succeeded"
    settled = Event.objects.get(type="com.example.payment.settled")

    shipping = [drive(r) for r in match_event(event_id=settled.pk)]

    assert [(r.workflow.slug, r.status) for r in shipping] == [("demo-shipping", "succeeded")]
    assert settled.correlation_id == run.correlation_id
    assert settled.received_at <= timezone.now()
