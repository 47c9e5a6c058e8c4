"""`GET /metrics`: Prometheus text, behind an API token, with figures that follow what
really happened (events published, run outcomes, runs and attempts in flight, dead letters
waiting, bus partitions, breakers)."""

from __future__ import annotations

import os
import time

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import cloudevent, definition, log_step
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events import bus
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.infra import circuit
from workflows.infra.redis_client import client
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run


@pytest.fixture
def private_redis(settings):
    """Counters and streams of this test only: a running stack shares the run's prefix."""
    settings.REDIS_PREFIX = f"{settings.REDIS_PREFIX}-metrics-{os.getpid()}-{time.time_ns()}"
    yield settings
    for name in client().scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000):
        client().delete(name)


@pytest.fixture
def scrape(client, private_redis, db):
    _token, plaintext = create_api_token(name="prometheus", role="viewer")

    def get() -> dict[tuple[str, tuple], float]:
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/plain; version=")
        samples = {}
        for family in text_string_to_metric_families(response.content.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    return get


def stored_event(**overrides) -> Event:
    event, _ = ingest_event(envelope=from_structured(cloudevent(**overrides)), publish=False)
    return event


def test_metrics_need_an_api_token(client, db):
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer sbx_not-a-token")
    assert response.status_code == 401


def test_published_events_and_run_outcomes_are_counted_once(scrape):
    before = scrape()
    first, second = stored_event(), stored_event()
    finished = stored_event(
        type_="signalbox.run.succeeded", source="/signalbox/runs/7", sbworkflow="orders"
    )
    Event.objects.filter(pk=finished.pk).update(channel="run")
    finished.refresh_from_db()

    assert bus.publish_many([first, second, finished]) == 3
    # The relay sending an event again (its entry was lost) is not a new event.
    bus._append([first])

    after = scrape()
    http = ("signalbox_events_published_total", (("channel", "http"),))
    run = ("signalbox_events_published_total", (("channel", "run"),))
    outcome = ("signalbox_runs_total", (("outcome", "succeeded"), ("workflow", "orders")))
    assert after[http] - before.get(http, 0) == 2
    assert after[run] - before.get(run, 0) == 1
    assert after[outcome] - before.get(outcome, 0) == 1


def test_runs_in_flight_and_dead_letters_waiting_follow_the_database(scrape):
    put_workflow(slug="metered", raw=definition(log_step("only")))
    version = publish_workflow(slug="metered")
    for status in ("queued", "running", "running", "succeeded"):
        Run.objects.create(
            workflow=version.workflow, version=version, event=stored_event(), status=status
        )
    DeadLetter.objects.create(kind="bus", reason="poison", payload={})
    DeadLetter.objects.create(kind="step", reason="exhausted", payload={})
    DeadLetter.objects.create(kind="step", reason="decided", payload={}, resolved_at=timezone.now())

    samples = scrape()
    in_flight = "signalbox_runs_in_flight"
    assert samples[(in_flight, (("status", "queued"), ("workflow", "metered")))] == 1
    assert samples[(in_flight, (("status", "running"), ("workflow", "metered")))] == 2
    assert (in_flight, (("status", "succeeded"), ("workflow", "metered"))) not in samples
    assert samples[("signalbox_dead_letters_waiting", (("kind", "bus"),))] == 1
    assert samples[("signalbox_dead_letters_waiting", (("kind", "step"),))] == 1
    assert samples[("signalbox_step_attempts_in_flight", (("status", "waiting"),))] == 0


def test_bus_lag_queue_depth_and_breakers_come_from_redis(scrape):
    event = stored_event(subject="lagging")
    bus.ensure_groups(client(), bus.settings.SIGNALBOX["BUS_GROUP"])
    assert bus.publish(event)
    partition = str(bus.partition_for(event))
    host = "127.0.0.1:1"
    circuit.reset(host)
    for _ in range(circuit.failure_threshold()):
        circuit.failed(circuit.acquire(host), "connect")

    samples = scrape()
    assert samples[("signalbox_bus_lag", (("partition", partition),))] == 1
    assert samples[("signalbox_bus_stream_length", (("partition", partition),))] == 1
    assert samples[("signalbox_bus_pending", (("partition", partition),))] == 0
    assert ("signalbox_queue_depth", (("queue", bus.settings.CELERY_TASK_DEFAULT_QUEUE),)) in (
        samples
    )
    assert samples[("signalbox_circuit_state", (("host", host),))] == 2
    circuit.reset(host)
