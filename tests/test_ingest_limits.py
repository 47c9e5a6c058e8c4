"""Ingest refuses what the event store cannot hold, the same on every path and database:
attributes longer than their column, sources that are no URI-reference, times that leave
datetime's range once in UTC. A refusal is a 400 problem (HTTP), a quarantine (external
streams) or a failed step (emit_event), never a 500 or a retried crash."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.factories import cloudevent, definition
from tests.steps_by_hand import step_of
from workflows.events.envelope import MAX_LENGTHS
from workflows.events.external_streams import Entry, Source, ingest_entry
from workflows.events.models import DeadLetter, Event

URL = "/api/v1/events"
CE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


@pytest.fixture
def editor(client, db):
    from workflows.access.tokens import create_api_token

    _row, plaintext = create_api_token(name="limits", role="editor")
    return {"Authorization": f"Bearer {plaintext}"}


def post(client, editor, body, content_type=CE, **headers):
    return client.post(
        URL, data=json.dumps(body), content_type=content_type, headers={**editor, **headers}
    )


def problem_attributes(response) -> set[str]:
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"].startswith("application/problem+json")
    return {e["attribute"] for e in response.json()["errors"]}


# --- the Django view, every mode ---------------------------------------------------------


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_the_view_refuses_an_out_of_range_time_in_every_mode(client, editor, when):
    assert problem_attributes(post(client, editor, cloudevent(time=when))) == {"time"}
    assert problem_attributes(post(client, editor, [cloudevent(time=when)], BATCH)) == {"time"}
    binary = {
        "ce-specversion": "1.0",
        "ce-id": "b-1",
        "ce-source": "/tests",
        "ce-type": "t",
        "ce-time": when,
    }
    response = client.post(
        URL, data=b"{}", content_type="application/json", headers={**editor, **binary}
    )
    assert problem_attributes(response) == {"time"}


@pytest.mark.parametrize("attribute", ["id", "type", "subject", "source", "correlationid"])
def test_an_attribute_one_character_longer_than_its_column_is_refused(client, editor, attribute):
    longest = MAX_LENGTHS[attribute]
    prefix = "/" if attribute == "source" else ""

    at_limit = post(
        client, editor, cloudevent(**{attribute: prefix + "a" * (longest - len(prefix))})
    )
    over = post(
        client, editor, cloudevent(**{attribute: prefix + "a" * (longest + 1 - len(prefix))})
    )

    assert at_limit.status_code == 202, at_limit.content
    assert attribute in problem_attributes(over)


@pytest.mark.parametrize("source", ["has space", "/a\\b", "http://x/<y>", "%zz", "/café"])
def test_a_source_that_is_no_uri_reference_is_refused(client, editor, source):
    assert problem_attributes(post(client, editor, cloudevent(source=source))) == {"source"}


@pytest.mark.parametrize(
    "source", ["/orders", "https://shop.example/a?b=c#d", "urn:uuid:123", "erp%3Aout", "a/b"]
)
def test_uri_references_of_every_shape_are_accepted_as_sources(client, editor, source):
    assert post(client, editor, cloudevent(source=source)).status_code == 202


def test_a_relative_dataschema_is_refused_since_it_must_be_a_uri(client, editor):
    assert problem_attributes(post(client, editor, cloudevent(dataschema="schemas/1"))) == {
        "dataschema"
    }


# --- external streams ----------------------------------------------------------------------


def stream_entry(**fields) -> Entry:
    source = Source("limits", f"limits-{uuid.uuid4().hex[:6]}", "redis://127.0.0.1", "t.stream")
    return Entry(source=source, entry_id=f"1-{uuid.uuid4().int % 1000}", fields=fields)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "fields,attribute",
    [
        ({"time": "0001-01-01T00:00:00+01:00"}, "time"),
        ({"id": "x" * 256}, "id"),
        ({"source": "not a uri"}, "source"),
    ],
)
def test_a_stream_entry_the_store_cannot_hold_is_quarantined_at_once(fields, attribute):
    entry = stream_entry(data="{}", **fields)

    assert ingest_entry(entry) == "quarantined"

    letter = DeadLetter.objects.get(kind="event", payload__channel="stream")
    assert letter.reason.startswith("invalid CloudEvent")
    assert attribute in {p["attribute"] for p in letter.payload["problems"]}
    assert not Event.objects.filter(channel="stream").exists()


# --- emit_event: attributes rendered from expressions ------------------------------------


def emitter(**config) -> dict:
    return definition({"id": "emit", "kind": "emit_event", "config": config})


def test_an_emitted_type_rendered_longer_than_its_column_fails_the_step_clearly(by_hand):
    body = emitter(type="t.{{ event.data.long }}")
    run = by_hand.run("long-type", body, cloudevent(data={"long": "x" * 300}))

    step = step_of(run, "emit")
    assert run.status == "failed" and step.error_code == "invalid_event"
    assert "type: is longer than 255 characters" in step.error
    assert not Event.objects.filter(type__startswith="t.xxx").exists()


def test_an_emitted_source_that_is_no_uri_reference_fails_the_step(by_hand):
    run = by_hand.run(
        "bad-source",
        emitter(type="t.ok", source="/{{ event.data.name }}"),
        cloudevent(data={"name": "two words"}),
    )

    step = step_of(run, "emit")
    assert step.error_code == "invalid_event" and "source" in step.error


# --- sources Signalbox builds from names ------------------------------------------------


def test_manual_events_from_names_with_spaces_or_accents_get_a_valid_source(db):
    from workflows.events.manual_events import manual_source, send_manual_event

    event, created = send_manual_event(
        event_type="t.manual", data={}, source=manual_source("token-CI bot ü"), subject="x"
    )

    assert created and event.source == "/signalbox/manual/token-CI%20bot%20%C3%BC"
    assert manual_source("eddie@example.com") == "/signalbox/manual/eddie@example.com"
