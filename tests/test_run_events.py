"""Runs themselves are events: workflows can react to other workflows, without loops."""

from __future__ import annotations

import pytest
from django.db import transaction

from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Reply
from tests.waiting import wait_until
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.core import engine
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.runs.advance import advance_locked
from workflows.runs.matching import ingest_event, match_event
from workflows.runs.models import Run
from workflows.runs.producers import DEFAULT_MAX_CAUSATION_DEPTH, RUN_SOURCE

pytestmark = pytest.mark.django_db(transaction=True)
CE_JSON = {"Content-Type": "application/cloudevents+json"}


def publish(api, slug: str, body: dict) -> None:
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def send(api, event: dict) -> Event:
    response = api.post("/api/v1/events", json=event, headers=CE_JSON)
    assert response.status_code == 202, response.text
    return Event.objects.get(pk=response.json()["id"])


def run_of(slug: str, **filters) -> Run:
    return wait_until(
        lambda: Run.objects.filter(
            workflow__slug=slug, status__in=["succeeded", "failed"], **filters
        ).first(),
        message=f"a finished run of {slug}",
    )


def run_event(run: Run, status: str) -> Event:
    return wait_until(
        lambda: Event.objects.filter(source=RUN_SOURCE, ce_id=f"run-{run.pk}-{status}").first(),
        message=f"the {status} event of run {run.pk}",
    )


def test_a_runs_start_and_success_are_events_another_workflow_reacts_to(api):
    publish(api, "orders", definition(log_step("take")))
    publish(api, "audit", definition(log_step("record"), event="signalbox.run.succeeded"))
    trigger = send(api, cloudevent(data={"order": 9}))

    orders = run_of("orders", event=trigger)
    started, succeeded = run_event(orders, "started"), run_event(orders, "succeeded")
    audit = run_of("audit", event=succeeded)

    assert started.type == "signalbox.run.started" and started.channel == "run"
    assert succeeded.type == "signalbox.run.succeeded"
    assert succeeded.subject == "orders"
    assert succeeded.data == {
        "run": orders.pk,
        "workflow": "orders",
        "version": orders.version.number,
        "status": "succeeded",
        "error": "",
        "event": trigger.pk,
    }
    assert succeeded.extensions["sbworkflow"] == "orders"
    assert succeeded.extensions["sbdepth"] == 1
    assert succeeded.causation_id == trigger.ce_id
    assert succeeded.correlation_id == trigger.correlation_id == audit.correlation_id
    assert started.time <= succeeded.time
    assert audit.status == "succeeded"


def test_a_failed_run_is_a_run_failed_event_carrying_the_error(api, recorder):
    recorder.default = Reply(status=400, body={"error": "bad"})
    publish(api, "charge", definition(http_step("call", recorder.url)))
    trigger = send(api, cloudevent())

    run = run_of("charge", event=trigger)
    failed = run_event(run, "failed")

    assert run.status == "failed"
    assert failed.type == "signalbox.run.failed"
    assert failed.data["status"] == "failed" and "answered 400" in failed.data["error"]
    assert failed.data["error"] == run.error
    assert not Event.objects.filter(source=RUN_SOURCE, ce_id=f"run-{run.pk}-succeeded").exists()


def test_a_workflows_own_run_events_never_start_it_again(api):
    publish(api, "watcher", definition(log_step("look"), event="signalbox.run.succeeded"))
    publish(api, "worker", definition(log_step("work")))
    worker = run_of("worker", event=send(api, cloudevent()))
    watcher = run_of("watcher", event=run_event(worker, "succeeded"))
    own = run_event(watcher, "succeeded")

    # Matching is idempotent, so asking again is safe whether or not the bus already did.
    assert match_event(event_id=own.pk) == []
    assert not Run.objects.filter(event=own).exists()
    assert Run.objects.filter(workflow__slug="watcher").count() == 1


def test_a_causation_chain_stops_at_the_depth_limit_and_leaves_a_dead_letter(api):
    # ping and pong start each other forever, were it not for the depth limit.
    ping = definition(log_step("hit"), event="com.example.serve")
    ping["triggers"].append({"event": "signalbox.run.succeeded"})
    publish(api, "ping", ping)
    publish(api, "pong", definition(log_step("hit"), event="signalbox.run.succeeded"))
    trigger = send(api, cloudevent("com.example.serve"))

    letter = wait_until(
        lambda: DeadLetter.objects.filter(kind="event").first(),
        timeout=90,
        message="the chain to be cut",
    )

    runs = list(Run.objects.select_related("event", "workflow").order_by("pk"))
    limit = DEFAULT_MAX_CAUSATION_DEPTH
    assert [run.event.extensions.get("sbdepth", 0) for run in runs] == list(range(limit))
    assert [run.workflow.slug for run in runs] == ["ping", "pong"] * (limit // 2)
    assert {run.correlation_id for run in runs} == {trigger.correlation_id}
    assert letter.event.extensions["sbdepth"] == limit
    assert letter.event.extensions["sbworkflow"] == "pong"
    assert f"causation chain is {limit} deep" in letter.reason and "ping" in letter.reason
    assert not Run.objects.filter(event=letter.event).exists()


def test_a_run_event_is_written_in_the_same_transaction_as_the_run_state():
    put_workflow(slug="atomic", raw=definition(log_step("only"), event="com.example.atomic"))
    version = publish_workflow(slug="atomic")
    # A type nothing subscribes to, so a running bus consumer starts no run of its own.
    trigger, _ = ingest_event(envelope=from_structured(cloudevent("com.example.nobody")))

    with pytest.raises(RuntimeError), transaction.atomic():
        run = Run.objects.create(workflow=version.workflow, version=version, event=trigger)
        advance_locked(run, engine.RunStarted())
        assert Event.objects.filter(ce_id=f"run-{run.pk}-started").exists()
        raise RuntimeError("the run's transaction fails")

    assert not Event.objects.filter(source=RUN_SOURCE).exists()
