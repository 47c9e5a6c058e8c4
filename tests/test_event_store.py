"""The event store API: GET /api/v1/events (filters, keyset pages) and /api/v1/events/<id>."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.factories import cloudevent, definition, log_step
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token
from workflows.events.envelope import from_structured
from workflows.events.models import Event, EventSchema, EventType
from workflows.runs.matching import ingest_event

CE_JSON = {"Content-Type": "application/cloudevents+json"}


def store(type_: str = "com.example.order.placed", **overrides) -> Event:
    event, created = ingest_event(envelope=from_structured(cloudevent(type_, **overrides)))
    assert created
    return event


def received(event: Event, when: datetime) -> Event:
    Event.objects.filter(pk=event.pk).update(received_at=when)
    return event


@pytest.fixture
def viewer(client, db):
    _token, plaintext = create_api_token(name="viewer", role="viewer")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plaintext}"
    return client


def listed(viewer, **params) -> list[int]:
    response = viewer.get("/api/v1/events", params)
    assert response.status_code == 200, response.content
    return [e["id"] for e in response.json()["events"]]


def test_events_are_listed_newest_first_as_cloudevents_with_signalbox_metadata(viewer):
    older = store(subject="order-1", data={"order": 1}, correlationid="conv-1")
    newer = store("com.example.order.shipped", time="2026-01-31T12:00:00Z")

    response = viewer.get("/api/v1/events")

    assert response.status_code == 200
    body = response.json()
    assert [e["id"] for e in body["events"]] == [newer.pk, older.pk]
    assert body["next"] is None
    entry = body["events"][1]
    assert entry["cloudevent"] == {
        "specversion": "1.0",
        "id": older.ce_id,
        "source": "/tests",
        "type": "com.example.order.placed",
        "subject": "order-1",
        "datacontenttype": "application/json",
        "correlationid": "conv-1",
        "causationid": older.ce_id,
        "data": {"order": 1},
    }
    assert entry["channel"] == "http"
    assert entry["validation"] == "unvalidated" and entry["schema_version"] is None
    # Inside a test transaction nothing commits, so nothing reaches the bus.
    assert entry["published"] is False
    assert entry["correlation_id"] == "conv-1"
    assert datetime.fromisoformat(entry["received_at"]) == older.received_at
    assert body["events"][0]["cloudevent"]["time"] == "2026-01-31T12:00:00Z"


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("type", "com.example.order.shipped"),
        ("source", "/shop"),
        ("subject", "order-7"),
        ("correlation_id", "conv-7"),
        ("correlationid", "conv-7"),
    ],
)
def test_each_filter_keeps_only_the_events_that_match_it(viewer, parameter, value):
    wanted = store(
        "com.example.order.shipped", source="/shop", subject="order-7", correlationid="conv-7"
    )
    store("com.example.order.placed", source="/other", subject="order-8", correlationid="conv-8")

    assert listed(viewer, **{parameter: value}) == [wanted.pk]


def test_filters_combine_and_empty_values_mean_no_filter(viewer):
    both = store("com.example.a", source="/shop")
    store("com.example.a", source="/elsewhere")
    store("com.example.b", source="/shop")

    assert listed(viewer, type="com.example.a", source="/shop", subject="") == [both.pk]


def test_the_time_range_keeps_events_received_from_after_until_before(viewer):
    noon = datetime(2026, 1, 31, 12, tzinfo=UTC)
    early = received(store(), noon - timedelta(minutes=1))
    at_start = received(store(), noon)
    inside = received(store(), noon + timedelta(minutes=30))
    received(store(), noon + timedelta(hours=1))  # `before` itself is excluded

    window = {"after": "2026-01-31T12:00:00Z", "before": "2026-01-31T13:00:00Z"}
    assert listed(viewer, **window) == [inside.pk, at_start.pk]
    # An offset other than UTC, and a time without one (read as UTC), mean the same instant.
    assert listed(viewer, before="2026-01-31T13:00:00+01:00") == [early.pk]
    assert listed(viewer, before="2026-01-31T12:00:00") == [early.pk]


def test_an_unencoded_plus_in_a_time_offset_is_still_understood(viewer):
    event = received(store(), datetime(2026, 1, 31, 12, tzinfo=UTC))

    # "+01:00" typed into a URL without encoding arrives as " 01:00".
    response = viewer.get("/api/v1/events?after=2026-01-31T12:30:00+01:00")

    assert [e["id"] for e in response.json()["events"]] == [event.pk]


def test_following_next_links_visits_every_matching_event_once_newest_first(viewer):
    wanted = [store("com.example.paged").pk for _ in range(5)]
    store("com.example.other")

    seen, url, pages = [], "/api/v1/events?type=com.example.paged&limit=2", 0
    while url:
        response = viewer.get(url)
        assert response.status_code == 200
        body = response.json()
        seen += [e["id"] for e in body["events"]]
        assert all(e["cloudevent"]["type"] == "com.example.paged" for e in body["events"])
        url, pages = body["next"], pages + 1
        if url:
            assert response["Link"] == f'<{url}>; rel="next"'

    assert seen == sorted(wanted, reverse=True)
    assert pages == 3


def test_a_page_that_ends_exactly_at_the_last_event_has_no_next_link(viewer):
    for _ in range(2):
        store()

    body = viewer.get("/api/v1/events", {"limit": 2}).json()

    assert len(body["events"]) == 2 and body["next"] is None


def test_cursor_is_an_alias_of_before_id(viewer):
    first, second, third = store(), store(), store()

    assert listed(viewer, cursor=third.pk) == [second.pk, first.pk]
    assert listed(viewer, before_id=second.pk) == [first.pk]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("before_id=-3", "before_id"),
        ("cursor=abc", "before_id"),
        ("after=yesterday", "after"),
        ("before=2026-13-01T00:00:00Z", "before"),
        ("after=2026-02-01T00:00:00Z&before=2026-01-01T00:00:00Z", "after"),
        ("typ=com.example.order.placed", "typ"),
        ("type=a&type=b", "type"),
        ("correlation_id=a&correlationid=b", "correlationid"),
    ],
)
def test_a_bad_query_value_gets_a_400_problem_naming_the_parameter(viewer, query, parameter):
    response = viewer.get(f"/api/v1/events?{query}")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/invalid-query")
    assert parameter in [error["parameter"] for error in problem["errors"]]


def test_reading_the_event_store_needs_a_token(client, db):
    store()

    assert client.get("/api/v1/events").status_code == 401
    assert client.get(f"/api/v1/events/{Event.objects.get().pk}").status_code == 401


def test_an_event_shows_its_validation_result_and_schema_version(viewer):
    order_type = EventType.objects.create(name="com.example.order.placed")
    EventSchema.objects.create(
        event_type=order_type,
        version=1,
        schema={"type": "object", "required": ["order"]},
    )
    event = store(data={"order": 3})

    response = viewer.get(f"/api/v1/events/{event.pk}")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == event.pk
    assert body["validation"] == "valid" and body["schema_version"] == 1
    assert body["cloudevent"]["data"] == {"order": 3}
    assert body["runs"] == []


def test_an_unknown_event_id_is_a_404_problem(viewer):
    response = viewer.get("/api/v1/events/999999")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.django_db(transaction=True)
def test_an_event_lists_the_runs_it_started_end_to_end(api):
    for slug in ("ship", "invoice"):
        put = api.put(f"/api/v1/workflows/{slug}", json=definition(log_step("only"), name=slug))
        assert put.status_code in (200, 201), put.text
        assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201
    sent = api.post("/api/v1/events", json=cloudevent(), headers=CE_JSON)
    assert sent.status_code == 202, sent.text
    event_id = sent.json()["id"]

    def both_runs_finished():
        body = api.get(f"/api/v1/events/{event_id}").json()
        statuses = [run["status"] for run in body["runs"]]
        return body if statuses == ["succeeded", "succeeded"] else None

    body = wait_until(both_runs_finished, timeout=60, message="two finished runs of the event")
    assert sorted(run["workflow"] for run in body["runs"]) == ["invoice", "ship"]
    for run in body["runs"]:
        assert api.get(run["url"]).json()["event"] == event_id
    assert body["published"] is True
    listed_ids = [e["id"] for e in api.get("/api/v1/events", params={"limit": 5}).json()["events"]]
    assert event_id in listed_ids
