"""POST /api/v1/events: authentication, validation and storage of structured CloudEvents.

Every refusal is application/problem+json naming what is wrong; nothing crashes."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.db import connections
from django.utils import timezone

from tests.factories import cloudevent
from workflows.access.models import ApiToken
from workflows.access.tokens import create_api_token
from workflows.events.models import Event

URL = "/api/v1/events"
CE = "application/cloudevents+json"
PROBLEM = "application/problem+json"


@pytest.fixture
def token(db):
    def make(role: str = "editor", name: str | None = None) -> str:
        _row, plaintext = create_api_token(name=name or f"{role}-token", role=role)
        return plaintext

    return make


@pytest.fixture
def post(client, token):
    editor = token("editor")

    def send(body, *, content_type: str = CE, auth: str | None = None, **headers):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        return client.post(
            URL,
            data=body,
            content_type=content_type,
            headers={"Authorization": auth or f"Bearer {editor}", **headers},
        )

    return send


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith(PROBLEM), response["Content-Type"]
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


def attributes_named(response) -> set[str]:
    body = assert_problem(response, 400)
    return {problem["attribute"] for problem in body["errors"]}


# --- who may post -------------------------------------------------------------------------------
def test_a_request_without_a_token_is_refused_with_401(client, db):
    response = client.post(URL, data=json.dumps(cloudevent()), content_type=CE)

    assert_problem(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "header",
    ["Token abc", "Bearer", "Bearer    ", "Basic dXNlcjpwYXNz", "bearer", "sbx_only-the-token"],
)
def test_a_malformed_authorization_header_is_refused_with_401(post, header):
    assert_problem(post(cloudevent(), auth=header), 401)
    assert not Event.objects.exists()


def test_an_unknown_token_is_refused_with_401(post):
    assert_problem(post(cloudevent(), auth="Bearer sbx_not-a-token-we-issued"), 401)
    assert not Event.objects.exists()


def test_a_revoked_token_is_refused_with_401(post, token):
    revoked = token("admin", name="old")
    ApiToken.objects.filter(name="old").update(revoked_at=timezone.now() - timedelta(minutes=1))

    assert_problem(post(cloudevent(), auth=f"Bearer {revoked}"), 401)
    assert not Event.objects.exists()


def test_a_viewer_token_cannot_post_events(post, token):
    body = assert_problem(post(cloudevent(), auth=f"Bearer {token('viewer')}"), 403)

    assert "editor" in body["detail"]
    assert not Event.objects.exists()


def test_the_token_scheme_is_case_insensitive(post, token):
    assert post(cloudevent(), auth=f"bearer {token('editor', name='lower')}").status_code == 202


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/xml"])
def test_a_body_that_is_not_a_cloudevent_media_type_is_refused_with_415(post, content_type):
    assert_problem(post(cloudevent(), content_type=content_type), 415)
    assert not Event.objects.exists()


# --- what a valid event is ----------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_a_missing_required_attribute_is_named(post, missing):
    event = cloudevent()
    del event[missing]

    assert attributes_named(post(event)) == {missing}


def test_every_missing_attribute_is_named_at_once(post):
    assert attributes_named(post({"data": {}})) == {"id", "source", "type", "specversion"}


@pytest.mark.parametrize(
    ("overrides", "attribute"),
    [
        pytest.param({"specversion": "0.3"}, "specversion", id="specversion_0_3"),
        pytest.param({"specversion": 1.0}, "specversion", id="specversion_a_number"),
        pytest.param({"id": 17}, "id", id="id_a_number"),
        pytest.param({"id": ""}, "id", id="id_empty"),
        pytest.param({"source": ["a"]}, "source", id="source_a_list"),
        pytest.param({"type": None}, "type", id="type_null"),
        pytest.param({"time": "yesterday"}, "time", id="time_not_rfc3339"),
        pytest.param({"time": "2026-02-30T10:00:00Z"}, "time", id="time_impossible_date"),
        pytest.param({"time": "2026-01-31 10:00:00"}, "time", id="time_without_zone"),
        pytest.param({"datacontenttype": "json"}, "datacontenttype", id="bad_datacontenttype"),
        pytest.param({"datacontenttype": 5}, "datacontenttype", id="datacontenttype_a_number"),
        pytest.param({"subject": ""}, "subject", id="subject_empty"),
        pytest.param({"data_base64": "aGk="}, "data_base64", id="data_and_data_base64"),
        pytest.param({"MyExt": "x"}, "MyExt", id="uppercase_extension_name"),
        pytest.param({"my-ext": "x"}, "my-ext", id="extension_name_with_a_dash"),
        pytest.param({"a" * 21: "x"}, "a" * 21, id="extension_name_too_long"),
        pytest.param({"ext": 1.5}, "ext", id="extension_a_float"),
        pytest.param({"ext": {"a": 1}}, "ext", id="extension_an_object"),
        pytest.param({"ext": 2**40}, "ext", id="extension_integer_beyond_32_bits"),
    ],
)
def test_an_invalid_attribute_is_named(post, overrides, attribute):
    assert attribute in attributes_named(post(cloudevent(**overrides)))
    assert not Event.objects.exists()


def test_invalid_base64_data_is_named(post):
    event = cloudevent(data_base64="not base64!!")
    del event["data"]

    assert attributes_named(post(event)) == {"data_base64"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"specversion": "1.0", "id": "1"', id="truncated"),
        pytest.param(b"{'specversion': '1.0'}", id="single_quotes"),
        pytest.param(b"[1, 2, 3]", id="an_array"),
        pytest.param(b'"just a string"', id="a_string"),
        pytest.param(b"null", id="null"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(post, body):
    assert attributes_named(post(body)) == {"(body)"}


def test_a_body_that_is_not_utf8_is_refused(post):
    body = json.dumps(cloudevent(data="caf\u00e9"), ensure_ascii=False).encode("latin-1")

    response = post(body)

    assert attributes_named(response) == {"(body)"}
    assert "UTF-8" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(("opener", "depth"), [("[", 100_000), ('{"":', 40_000)])
def test_deeply_nested_json_is_refused_not_crashed_on(post, opener, depth):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    body = json.dumps(cloudevent(data="PLACEHOLDER")).replace('"PLACEHOLDER"', nested)

    response = post(body.encode())

    assert attributes_named(response) == {"(body)"}
    assert "nested" in response.json()["errors"][0]["message"]


def test_nesting_within_the_limit_is_accepted(post):
    assert post(cloudevent(data=json.loads("[" * 50 + "]" * 50))).status_code == 202


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400"], ids=["nan", "inf", "-inf", "overflow"]
)
def test_json_numbers_that_are_not_finite_are_refused(post, literal):
    body = json.dumps(cloudevent(data="PLACEHOLDER")).replace('"PLACEHOLDER"', literal)

    assert_problem(post(body.encode()), 400)
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "attribute"),
    [
        pytest.param({"id": "a\u0000b"}, "id", id="nul_in_id"),
        pytest.param({"subject": "\u0000"}, "subject", id="nul_in_subject"),
        pytest.param({"ext": "x\u0000"}, "ext", id="nul_in_an_extension"),
        pytest.param({"data": {"note": "a\u0000b"}}, "data", id="nul_in_data"),
        pytest.param({"data": {"a\u0000": 1}}, "data", id="nul_in_a_data_key"),
        pytest.param({"id": "\ud800"}, "id", id="lone_surrogate_in_id"),
        pytest.param({"data": ["\udfff"]}, "data", id="lone_surrogate_in_data"),
    ],
)
def test_text_the_database_cannot_store_is_refused_by_name(post, overrides, attribute):
    # json.dumps writes these as \u escapes, which JSON allows but PostgreSQL cannot store.
    assert attribute in attributes_named(post(cloudevent(**overrides)))
    assert not Event.objects.exists()


# --- size ---------------------------------------------------------------------------------------
def oversize_event() -> dict:
    return cloudevent(data={"blob": "x" * (settings.SIGNALBOX["MAX_EVENT_BYTES"] + 1)})


def test_an_oversize_body_is_refused_with_413(post):
    body = assert_problem(post(oversize_event()), 413)

    assert str(settings.SIGNALBOX["MAX_EVENT_BYTES"]) in body["detail"]
    assert not Event.objects.exists()


def test_a_body_at_the_limit_is_not_refused_for_size(post):
    event = cloudevent(data={"blob": ""})
    room = settings.SIGNALBOX["MAX_EVENT_BYTES"] - len(json.dumps(event).encode())
    event["data"]["blob"] = "x" * room
    body = json.dumps(event).encode()
    assert len(body) == settings.SIGNALBOX["MAX_EVENT_BYTES"]

    assert post(body).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_an_oversize_body_without_content_length_is_refused_by_the_real_server(api):
    payload = json.dumps(oversize_event()).encode()

    def chunks():  # a generator body is sent chunked: no Content-Length at all
        for start in range(0, len(payload), 16384):
            yield payload[start : start + 16384]

    response = api.post(URL, content=chunks(), headers={"Content-Type": CE})

    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert not Event.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_understated_content_length_cannot_smuggle_an_oversize_event_in(stack, api_token):
    payload = json.dumps(oversize_event()).encode()
    host, port = "127.0.0.1", stack.port
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {CE}\r\n"
        f"Authorization: Bearer {api_token}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(head + payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk

    status_line = received.split(b"\r\n", 1)[0]
    # The server reads only the declared 100 bytes: a truncated, invalid event.
    assert status_line.split()[1] == b"400", received[:500]
    assert PROBLEM.encode() in received.split(b"\r\n\r\n", 1)[0]
    assert not Event.objects.exists()
    assert httpx.get(f"{stack.base_url}/healthz", timeout=5).status_code == 200


# --- storing ------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_an_accepted_event_is_committed_before_the_202(client):
    _row, plaintext = create_api_token(name="committer", role="editor")
    event = cloudevent(subject="order-7", time="2026-01-31T12:00:00Z", ext="yes")

    response = client.post(
        URL,
        data=json.dumps(event),
        content_type=CE,
        headers={"Authorization": f"Bearer {plaintext}"},
    )

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["duplicate"] is False
    # Read through a second connection: only committed rows are visible there.
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute(
                "SELECT source, ce_id, type, subject FROM workflows_event WHERE id = %s",
                [body["id"]],
            )
            row = cursor.fetchone()
    finally:
        other.close()
    assert row == ("/tests", event["id"], event["type"], "order-7")
    stored = Event.objects.get(pk=body["id"])
    assert stored.data == {"order": 42}
    assert stored.extensions["ext"] == "yes"
    assert stored.time.isoformat() == "2026-01-31T12:00:00+00:00"


def test_the_same_source_and_id_twice_is_stored_once(post):
    event = cloudevent()

    first = post(event)
    second = post({**event, "data": {"changed": True}})

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["duplicate"] is True
    assert second.json()["id"] == first.json()["id"]
    assert Event.objects.count() == 1
    assert Event.objects.get().data == {"order": 42}


def test_the_same_id_from_another_source_is_a_different_event(post):
    event = cloudevent()

    assert post(event).status_code == 202
    assert post({**event, "source": "/elsewhere"}).status_code == 202
    assert Event.objects.count() == 2


# --- never HTML under /api/ ---------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/runs/not-a-number", "/api/v2/events"])
def test_an_unknown_api_path_answers_problem_json(client, db, path):
    response = client.get(path)

    assert_problem(response, 404)
    assert b"<html" not in response.content.lower()


@pytest.mark.parametrize(
    ("method", "path"),
    [("delete", URL), ("put", URL), ("post", "/api/v1/runs"), ("delete", "/api/v1/workflows/x")],
)
def test_a_wrong_method_answers_405_problem_json_with_allow(client, db, method, path):
    response = getattr(client, method)(path)

    assert_problem(response, 405)
    assert response.has_header("Allow")
    assert b"<html" not in response.content.lower()


def test_the_events_endpoint_allows_get_and_post(client, db):
    response = client.delete(URL)

    assert_problem(response, 405)
    assert {m.strip() for m in response["Allow"].split(",")} == {"GET", "POST"}
