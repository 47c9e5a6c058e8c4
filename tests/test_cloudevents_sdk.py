"""The CloudEvents Python SDK as a real client of POST /api/v1/events, in both HTTP modes."""

from __future__ import annotations

import uuid

import httpx
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from tests.factories import definition, log_step
from tests.test_spine import finished_run, publish
from workflows.events.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


def sdk_event(**attributes) -> CloudEvent:
    return CloudEvent(
        attributes={
            "type": "com.example.order.placed",
            "source": "/sdk-client",
            "id": str(uuid.uuid4()),
            "subject": "order-9",
            "datacontenttype": "application/json",
            **attributes,
        },
        data={"order": 9, "total": 12.5},
    )


def post(api: httpx.Client, message) -> httpx.Response:
    return api.post("/api/v1/events", content=message.body, headers=message.headers)


def test_a_structured_event_from_the_sdk_is_accepted_stored_and_runs(api):
    publish(api, "sdk-structured", definition(log_step("seen")))
    event = sdk_event()
    message = ce_http.to_structured_event(event)

    response = post(api, message)

    assert message.headers["content-type"].startswith("application/cloudevents+json")
    assert response.status_code == 202, response.text
    stored = Event.objects.get(pk=response.json()["id"])
    assert (stored.ce_id, stored.source, stored.subject) == (
        event.get_id(),
        "/sdk-client",
        "order-9",
    )
    assert stored.data == {"order": 9, "total": 12.5}
    assert stored.time is not None
    assert finished_run(api, "sdk-structured", stored.pk)["status"] == "succeeded"


def test_a_binary_event_from_the_sdk_is_accepted_with_its_extensions(api):
    event = sdk_event(
        partitionkey="customer-3", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    )
    message = ce_http.to_binary_event(event)

    response = post(api, message)

    assert "ce-id" in {k.lower() for k in message.headers}
    assert response.status_code == 202, response.text
    stored = Event.objects.get(pk=response.json()["id"])
    assert stored.ce_id == event.get_id()
    assert stored.data == {"order": 9, "total": 12.5}
    assert stored.datacontenttype == "application/json"
    assert stored.extensions["partitionkey"] == "customer-3"
    assert stored.extensions["traceparent"].startswith("00-aaaa")


def test_the_same_sdk_event_sent_in_both_modes_is_stored_once(api):
    event = sdk_event()

    first = post(api, ce_http.to_structured_event(event))
    second = post(api, ce_http.to_binary_event(event))

    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["duplicate"] is True
    assert Event.objects.filter(source="/sdk-client", ce_id=event.get_id()).count() == 1


def test_an_sdk_binary_event_with_a_wrong_specversion_header_is_refused_naming_it(api):
    message = ce_http.to_binary_event(sdk_event())
    headers = {k: v for k, v in message.headers.items()}
    headers["ce-specversion"] = "0.3"

    response = api.post("/api/v1/events", content=message.body, headers=headers)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(e["attribute"] == "specversion" for e in response.json()["errors"])
