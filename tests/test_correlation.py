"""Correlation: every event says which conversation it belongs to and what caused it."""

from __future__ import annotations

import pytest

from tests.factories import cloudevent, definition, log_step
from tests.waiting import wait_until
from workflows.events.models import Event
from workflows.runs.models import Run
from workflows.runs.producers import RUN_SOURCE, valid_traceparent

CE_JSON = {"Content-Type": "application/cloudevents+json"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def publish(api, slug: str, body: dict) -> None:
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def send(api, event: dict) -> dict:
    response = api.post("/api/v1/events", json=event, headers=CE_JSON)
    assert response.status_code == 202, response.text
    return api.get(f"/api/v1/events/{response.json()['id']}").json()


def run_event(slug: str, status: str = "succeeded") -> Event:
    return wait_until(
        lambda: Event.objects.filter(
            source=RUN_SOURCE, subject=slug, type=f"signalbox.run.{status}"
        ).first(),
        message=f"a {status} event of {slug}",
    )


@pytest.mark.django_db(transaction=True)
def test_an_event_without_correlation_starts_its_own_conversation(api):
    stored = send(api, cloudevent(id="order-1"))

    assert stored["correlation_id"] == "order-1" and stored["causation_id"] == "order-1"
    assert stored["cloudevent"]["correlationid"] == "order-1"
    assert stored["cloudevent"]["causationid"] == "order-1"


@pytest.mark.django_db(transaction=True)
def test_a_given_correlation_is_kept_and_runs_and_their_events_inherit_it(api):
    publish(api, "ship", definition(log_step("pack")))
    stored = send(api, cloudevent(id="order-2", correlationid="checkout-7", causationid="cart-3"))

    assert stored["correlation_id"] == "checkout-7" and stored["causation_id"] == "cart-3"
    started, succeeded = run_event("ship", "started"), run_event("ship")
    run = Run.objects.get(workflow__slug="ship")
    assert run.correlation_id == "checkout-7"
    for emitted in (started, succeeded):
        assert emitted.correlation_id == emitted.extensions["correlationid"] == "checkout-7"
        assert emitted.causation_id == emitted.extensions["causationid"] == "order-2"


@pytest.mark.django_db(transaction=True)
def test_a_traceparent_is_kept_as_given_and_passed_on_to_run_events(api):
    publish(api, "traced", definition(log_step("look")))
    stored = send(api, cloudevent(traceparent=TRACEPARENT))

    assert stored["cloudevent"]["traceparent"] == TRACEPARENT
    assert run_event("traced").extensions["traceparent"] == TRACEPARENT


@pytest.mark.django_db(transaction=True)
def test_a_malformed_traceparent_is_dropped_and_the_event_still_accepted(api):
    stored = send(api, cloudevent(traceparent="00-not-a-trace-01"))

    assert "traceparent" not in stored["cloudevent"]


@pytest.mark.django_db(transaction=True)
def test_a_chain_of_workflows_shares_one_correlation_and_records_each_cause(api):
    publish(api, "first", definition(log_step("a")))
    publish(api, "second", definition(log_step("b"), event="signalbox.run.succeeded"))
    stored = send(api, cloudevent(id="origin-1", traceparent=TRACEPARENT))

    first_done = run_event("first")
    second_run = wait_until(
        lambda: Run.objects.filter(workflow__slug="second").first(),
        message="the second workflow's run",
    )
    second_done = run_event("second")

    conversation = {
        stored["correlation_id"],
        first_done.correlation_id,
        second_run.correlation_id,
        second_done.correlation_id,
    }
    assert conversation == {"origin-1"}
    assert second_run.event_id == first_done.pk
    # Each event names the event that caused it: origin -> first's run -> second's run.
    assert first_done.causation_id == "origin-1"
    assert second_done.causation_id == first_done.ce_id
    assert second_done.extensions["sbdepth"] == 2
    assert second_done.extensions["traceparent"] == TRACEPARENT


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACEPARENT, True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", False),
        (42, False),
    ],
)
def test_traceparent_follows_the_w3c_trace_context_format(value, valid):
    assert valid_traceparent(value) is valid
