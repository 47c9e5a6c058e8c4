"""Dashboard event pages, and the manual producer: a signed-in editor sends an event."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.accounts import sign_in
from tests.factories import cloudevent, definition, log_step
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events.envelope import from_structured
from workflows.events.models import Event, EventSchema, EventType
from workflows.runs.matching import ingest_event, match_event


def store(type_: str = "com.example.order.placed", **overrides) -> Event:
    return ingest_event(envelope=from_structured(cloudevent(type_, **overrides)))[0]


@pytest.fixture
def viewer(client, db):
    return sign_in(client, "vera", "viewer")


@pytest.fixture
def editor(client, db):
    return sign_in(client, "eddie", "editor")


def row_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr id="event-(\d+)"', html)]


def test_the_events_page_lists_events_newest_first_for_a_viewer(viewer):
    first = store(subject="order-1")
    second = store("com.example.order.shipped")

    response = viewer.get("/events/")

    assert response.status_code == 200
    html = response.content.decode()
    assert row_ids(html) == [second.pk, first.pk]
    assert "com.example.order.shipped" in html and "order-1" in html
    assert 'href="/events/"' in html  # the nav link
    assert "Send event" not in html  # viewers cannot send


def test_the_events_page_filters_with_the_same_parameters_as_the_api(viewer):
    wanted = store("com.example.a", subject="s-1", correlationid="conv-1")
    store("com.example.a", subject="s-2")
    store("com.example.b", subject="s-1")

    response = viewer.get(
        "/events/",
        {"type": "com.example.a", "subject": "s-1", "source": "", "correlation_id": "conv-1"},
    )

    assert row_ids(response.content.decode()) == [wanted.pk]
    assert 'value="com.example.a"' in response.content.decode()  # the form keeps the filter


def test_an_htmx_request_gets_only_the_event_table(viewer):
    event = store()

    response = viewer.get("/events/", {"type": event.type}, headers={"HX-Request": "true"})

    html = response.content.decode()
    assert html.lstrip().startswith('<div id="event-table">')
    assert "<html" not in html and row_ids(html) == [event.pk]
    assert "HX-Request" in response["Vary"]


def test_the_older_link_pages_back_through_the_events_keeping_the_filters(viewer):
    events = [store("com.example.paged").pk for _ in range(3)]
    store("com.example.other")

    first = viewer.get("/events/", {"type": "com.example.paged", "limit": 2}).content.decode()
    older = re.search(r'<a rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = viewer.get(older).content.decode()

    assert row_ids(first) == events[:0:-1]
    assert row_ids(second) == [events[0]]
    assert 'rel="next"' not in second
    assert "Newest" in second


def test_bad_filters_are_shown_on_the_page_instead_of_failing(viewer):
    store()

    response = viewer.get("/events/", {"after": "last tuesday", "limit": "0"})

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="event-filter-errors"' in html
    assert "<code>after</code> must be an ISO 8601 time" in html
    assert "<code>limit</code>" in html
    assert row_ids(html) == []


def test_the_event_page_shows_attributes_payload_validation_and_runs_started(viewer):
    EventSchema.objects.create(
        event_type=EventType.objects.create(name="com.example.order.placed"),
        version=1,
        schema={"type": "object"},
    )
    put_workflow(slug="ship", raw=definition(log_step("only"), name="Ship"))
    publish_workflow(slug="ship")
    event = store(
        subject="order-9", data={"order": 9, "note": "<b>fragile</b>"}, partitionkey="p-9"
    )
    [run] = match_event(event_id=event.pk)

    response = viewer.get(f"/events/{event.pk}/")

    assert response.status_code == 200
    html = response.content.decode()
    for attribute in ("ce-source", "ce-subject", "ce-partitionkey", "ce-correlationid"):
        assert f"<code>{attribute}</code>" in html
    assert event.ce_id in html and "order-9" in html
    assert "&quot;order&quot;: 9" in html  # pretty-printed, escaped
    assert "&lt;b&gt;fragile&lt;/b&gt;" in html and "<b>fragile" not in html
    assert 'data-validation="valid"' in html and "schema v1" in html
    assert f'href="/runs/{run.pk}/"' in html
    assert f'href="/events/?correlation_id={event.correlation_id}"' in html


def test_an_unknown_event_page_is_a_404(viewer):
    assert viewer.get("/events/424242/").status_code == 404


def test_an_anonymous_visitor_is_sent_to_sign_in(client, db):
    response = client.get("/events/")

    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_an_editor_sends_an_event_from_the_form(editor):
    page = editor.get("/events/send/")
    assert page.status_code == 200 and "/signalbox/manual/eddie" in page.content.decode()

    response = editor.post(
        "/events/send/",
        {"type": "com.example.order.placed", "subject": "order-5", "data": '{"order": 5}'},
        follow=True,
    )

    event = Event.objects.get()
    assert response.redirect_chain == [(f"/events/{event.pk}/", 302)]
    assert f"Event #{event.pk} sent." in response.content.decode()
    assert event.source == "/signalbox/manual/eddie"
    assert event.channel == "manual"
    assert event.type == "com.example.order.placed" and event.subject == "order-5"
    assert event.data == {"order": 5}
    assert uuid.UUID(event.ce_id)
    assert event.time is not None


def test_each_event_sent_from_the_form_gets_a_new_id(editor):
    for _ in range(2):
        editor.post("/events/send/", {"type": "com.example.ping", "data": ""})

    events = list(Event.objects.all())
    assert len(events) == 2 and events[0].ce_id != events[1].ce_id
    assert events[0].data is None


def test_a_viewer_is_refused_the_send_form(viewer):
    assert viewer.get("/events/send/").status_code == 403
    response = viewer.post("/events/send/", {"type": "com.example.ping", "data": "{}"})

    assert response.status_code == 403
    assert not Event.objects.exists()


def test_bad_json_in_the_form_is_shown_inline_and_nothing_is_sent(editor):
    response = editor.post("/events/send/", {"type": "com.example.ping", "data": '{"order": '})

    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="data-errors"' in html and "invalid JSON" in html
    assert "{&quot;order&quot;: </textarea>" in html  # what was typed is kept
    assert not Event.objects.exists()


def test_data_that_breaks_the_type_schema_is_shown_inline(editor):
    EventSchema.objects.create(
        event_type=EventType.objects.create(name="com.example.order.placed"),
        version=2,
        schema={"type": "object", "required": ["order"]},
    )

    response = editor.post(
        "/events/send/", {"type": "com.example.order.placed", "data": '{"item": 1}'}
    )

    assert response.status_code == 400
    html = response.content.decode()
    assert "schema v2" in html and "&#x27;order&#x27; is a required property" in html
    assert not Event.objects.exists()


def test_a_missing_type_is_shown_inline(editor):
    response = editor.post("/events/send/", {"type": "  ", "data": "{}"})

    assert response.status_code == 400
    assert 'id="type-errors"' in response.content.decode()
    assert not Event.objects.exists()


def test_the_send_form_suggests_the_type_a_manual_trigger_listens_to(editor):
    raw = {"name": "Nightly", "triggers": [{"manual": True}], "steps": [log_step("only")]}
    put_workflow(slug="nightly", raw=raw)
    publish_workflow(slug="nightly")

    html = editor.get("/events/send/").content.decode()
    assert '<option value="signalbox.manual.nightly">' in html

    editor.post("/events/send/", {"type": "signalbox.manual.nightly", "data": "{}"})
    [run] = match_event(event_id=Event.objects.get().pk)
    assert run.workflow.slug == "nightly"
