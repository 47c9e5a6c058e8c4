"""Text PostgreSQL cannot store (NUL, unpaired surrogates), sent where the API stores or
filters by it, is refused with a 400 problem; schemathesis first met each of these as a 500."""

from __future__ import annotations

import json

import pytest

from tests.factories import log_step
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events.models import DeadLetter, EventSchema
from workflows.events.schemas import register_schema
from workflows.runs.models import Run

PROBLEM = "application/problem+json"
NUL = "\u0000"
LONE_SURROGATE = "\ud800"


@pytest.fixture
def send(client, db):
    token = create_api_token(name="unstorable", role="admin")[1]

    def request(method: str, path: str, body: bytes | None = None):
        return client.generic(
            method,
            path,
            data=body or b"",
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )

    return request


def problem_of(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"].endswith("/" + kind)
    return body


def json_with(text: str, **fields) -> bytes:
    # json.dumps escapes both as \u sequences, the way a hostile client would send them.
    return json.dumps({**fields, "note": text}).encode()


@pytest.mark.parametrize("text", [NUL, LONE_SURROGATE])
def test_editing_a_dead_letter_with_unstorable_text_is_refused_and_changes_nothing(send, text):
    letter = DeadLetter.objects.create(kind="event", reason="test", payload={"n": 1})

    answer = send(
        "PATCH",
        f"/api/v1/dead-letters/{letter.pk}",
        json.dumps({"payload": {"n": 2, "text": f"a{text}b"}}).encode(),
    )

    assert "NUL" in problem_of(answer, 400, "invalid-body")["detail"]
    letter.refresh_from_db()
    assert letter.payload == {"n": 1} and letter.original_payload is None


def test_an_unstorable_key_is_refused_as_well_as_an_unstorable_value(send):
    letter = DeadLetter.objects.create(kind="event", reason="test", payload={"n": 1})

    answer = send(
        "PATCH", f"/api/v1/dead-letters/{letter.pk}", json.dumps({"payload": {NUL: 1}}).encode()
    )

    problem_of(answer, 400, "invalid-body")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/audit?action=a%00b",
        "/api/v1/audit?actor=%00",
        "/api/v1/runs?workflow=%00",
        "/api/v1/dead-letters?kind=%00",
        "/api/v1/audit?action=fine&action=%00",
    ],
)
def test_a_query_parameter_with_nul_is_refused(send, path):
    problem_of(send("GET", path), 400, "invalid-query")


def test_starting_a_run_by_hand_with_unstorable_data_is_refused(send):
    put_workflow(
        slug="by-hand",
        raw={"name": "By hand", "triggers": [{"manual": True}], "steps": [log_step("only")]},
    )
    publish_workflow(slug="by-hand")

    answer = send("POST", "/api/v1/workflows/by-hand/runs", json_with(NUL, data={"x": NUL}))

    problem_of(answer, 400, "invalid-body")
    assert not Run.objects.exists()


def test_trying_a_draft_with_unstorable_data_is_refused(send):
    put_workflow(slug="tried", raw={"name": "Tried", "steps": [log_step("only")]})

    answer = send("POST", "/api/v1/workflows/tried/try", json.dumps({"data": {"x": NUL}}).encode())

    problem_of(answer, 400, "invalid-body")
    assert not Run.objects.exists()


@pytest.mark.parametrize("text", [NUL, LONE_SURROGATE])
def test_a_schema_with_unstorable_text_in_a_key_is_refused_and_stores_nothing(send, text):
    # schemathesis found this one as a 500: a NUL in a property name of a new version.
    register_schema(event_type="com.example.unstorable", schema={"type": "object"})
    schema = {"type": "object", "properties": {f"a{text}b": {"type": "string"}}}

    answer = send(
        "POST",
        "/api/v1/schemas/com.example.unstorable/versions",
        json.dumps({"schema": schema}).encode(),
    )
    described = send(
        "PUT", "/api/v1/schemas/com.example.unstorable", json_with(text, compatibility="NONE")
    )

    assert "NUL" in problem_of(answer, 400, "invalid-body")["detail"]
    problem_of(described, 400, "invalid-body")
    assert EventSchema.objects.filter(event_type__name="com.example.unstorable").count() == 1
