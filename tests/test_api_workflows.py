"""The workflow and run API: validated drafts, immutable numbered versions, pinned runs,
keyset pagination, and roles."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.factories import cloudevent, definition, http_step, log_step
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.runs.models import Run

PROBLEM = "application/problem+json"


@pytest.fixture
def call(client, db):
    tokens: dict[str, str] = {}

    def send(method: str, path: str, body=None, *, role: str = "admin"):
        if role not in tokens:
            tokens[role] = create_api_token(name=f"{role}-token", role=role)[1]
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body)
        return client.generic(
            method.upper(),
            path,
            data=data,
            content_type="application/json",
            headers={"Authorization": f"Bearer {tokens[role]}"},
        )

    return send


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith(PROBLEM)
    return response.json()


def make_runs(slug: str, count: int) -> list[Run]:
    """Runs created straight in the database (no event, no execution) for the list API."""
    workflow = Workflow.objects.filter(slug=slug).first()
    if workflow is None:
        put_workflow(slug=slug, raw=definition(log_step("only")))
        publish_workflow(slug=slug)
        workflow = Workflow.objects.get(slug=slug)
    return [
        Run.objects.create(workflow=workflow, version=workflow.published_version)
        for _ in range(count)
    ]


# --- PUT ----------------------------------------------------------------------------------------
def test_an_invalid_definition_is_refused_with_every_problem_listed(call):
    body = definition(
        {"id": "a", "kind": "teleport", "config": {}},
        log_step("b", after=("ghost",)),
        {"id": "c", "kind": "http_request", "config": {"method": "NOPE"}},
    )

    problem = assert_problem(call("put", "/api/v1/workflows/broken", body), 400)

    paths = {error["path"] for error in problem["errors"]}
    assert paths == {
        "/steps/0/kind",
        "/steps/1/after/0",
        "/steps/2/config",
        "/steps/2/config/method",
    }
    assert all(error["message"] for error in problem["errors"])
    assert not Workflow.objects.filter(slug="broken").exists()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param({"name": "x", "steps": []}, "/steps", id="no_steps"),
        pytest.param({"steps": [log_step("a")]}, "/", id="no_name"),
        pytest.param({**definition(log_step("a")), "colour": "red"}, "/", id="unknown_key"),
        pytest.param(definition(log_step("a", after=("a",))), "/steps/0/after/0", id="self"),
        pytest.param(
            definition(log_step("a", after=("b",)), log_step("b", after=("a",))),
            "/steps",
            id="cycle",
        ),
    ],
)
def test_an_invalid_definition_names_the_path(call, body, path):
    problem = assert_problem(call("put", "/api/v1/workflows/bad", body), 400)

    assert path in {error["path"] for error in problem["errors"]}


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe", b'{"name": NaN}', b"[" * 1000 + b"]" * 1000],
    ids=["syntax", "not_utf8", "nan", "too_deep"],
)
def test_a_body_that_is_not_json_is_refused_with_400(call, body):
    assert_problem(call("put", "/api/v1/workflows/bad", body), 400)
    assert not Workflow.objects.exists()


def test_text_the_database_cannot_store_is_refused_with_400(call):
    body = definition(log_step("a", message="nul \u0000 inside"))

    assert_problem(call("put", "/api/v1/workflows/nul", body), 400)
    assert not Workflow.objects.exists()


def test_a_valid_definition_is_created_then_replaced(call):
    first = call("put", "/api/v1/workflows/orders", definition(log_step("a"), name="Orders"))
    second = call("put", "/api/v1/workflows/orders", definition(log_step("b"), name="Orders 2"))

    assert first.status_code == 201, first.content
    assert first.json()["published_version"] is None
    assert second.status_code == 200, second.content
    assert second.json()["name"] == "Orders 2"
    fetched = call("get", "/api/v1/workflows/orders", role="viewer")
    assert fetched.status_code == 200
    assert fetched.json()["draft"]["steps"] == [log_step("b")]
    assert Workflow.objects.count() == 1


def test_an_unknown_workflow_answers_404_problem(call):
    assert_problem(call("get", "/api/v1/workflows/nobody"), 404)
    assert_problem(call("post", "/api/v1/workflows/nobody/publish"), 404)


# --- publish ------------------------------------------------------------------------------------
def test_publishing_makes_numbered_immutable_versions(call):
    v1_body = definition(log_step("one"), name="First")
    v2_body = definition(log_step("two"), log_step("three", after=("two",)), name="Second")
    call("put", "/api/v1/workflows/flow", v1_body)

    first = call("post", "/api/v1/workflows/flow/publish", {"note": "initial"})
    call("put", "/api/v1/workflows/flow", v2_body)
    second = call("post", "/api/v1/workflows/flow/publish")

    assert (first.status_code, first.json()) == (201, {"workflow": "flow", "version": 1})
    assert (second.status_code, second.json()) == (201, {"workflow": "flow", "version": 2})
    versions = {v.number: v for v in WorkflowVersion.objects.filter(workflow__slug="flow")}
    assert versions[1].definition == v1_body
    assert versions[1].note == "initial"
    assert versions[2].definition == v2_body
    assert call("get", "/api/v1/workflows/flow").json()["published_version"] == 2


def test_editing_the_draft_does_not_change_the_published_version(call):
    call("put", "/api/v1/workflows/flow", definition(log_step("one")))
    call("post", "/api/v1/workflows/flow/publish")

    call("put", "/api/v1/workflows/flow", definition(log_step("changed")))

    version = WorkflowVersion.objects.get(workflow__slug="flow")
    assert version.definition == definition(log_step("one"))
    assert call("get", "/api/v1/workflows/flow").json()["published_version"] == 1


def test_a_run_stays_pinned_to_the_version_that_started_it(call):
    from workflows.events.envelope import from_structured
    from workflows.runs.matching import ingest_event, match_event

    call("put", "/api/v1/workflows/pinned", definition(log_step("one")))
    call("post", "/api/v1/workflows/pinned/publish")
    first_event, _ = ingest_event(envelope=from_structured(cloudevent()))
    [first_run] = match_event(event_id=first_event.pk)

    call("put", "/api/v1/workflows/pinned", definition(log_step("two")))
    call("post", "/api/v1/workflows/pinned/publish")
    second_event, _ = ingest_event(envelope=from_structured(cloudevent()))
    [second_run] = match_event(event_id=second_event.pk)

    old = call("get", f"/api/v1/runs/{first_run.pk}").json()
    new = call("get", f"/api/v1/runs/{second_run.pk}").json()
    assert (old["version"], [s["id"] for s in old["steps"]]) == (1, ["one"])
    assert (new["version"], [s["id"] for s in new["steps"]]) == (2, ["two"])


@pytest.mark.django_db(transaction=True)
def test_a_running_run_finishes_on_its_own_version_after_a_new_publish(api, recorder):
    from tests.http_recorder import Reply

    # v1's first call fails (503) and is retried 3 s later: v2 is published in between.
    recorder.answer(Reply(status=503))
    v1 = definition(
        http_step(
            "call", recorder.url, retry={"max_attempts": 3, "delay_seconds": 3, "jitter": False}
        ),
        log_step("v1-only", after=("call",)),
        event="com.example.pinned",
    )
    assert api.put("/api/v1/workflows/live-pinned", json=v1).status_code == 201
    assert api.post("/api/v1/workflows/live-pinned/publish").json()["version"] == 1
    sent = api.post(
        "/api/v1/events",
        json=cloudevent("com.example.pinned"),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert sent.status_code == 202
    wait_until(lambda: recorder.requests, message="the first attempt of v1")

    v2 = definition(log_step("v2-only"), event="com.example.pinned")
    assert api.put("/api/v1/workflows/live-pinned", json=v2).status_code == 200
    assert api.post("/api/v1/workflows/live-pinned/publish").json()["version"] == 2
    [mid] = api.get("/api/v1/runs", params={"workflow": "live-pinned"}).json()["runs"]
    assert mid["status"] == "running", "v2 must be published while the v1 run is under way"

    def finished():
        runs = api.get("/api/v1/runs", params={"workflow": "live-pinned"}).json()["runs"]
        return runs if runs and runs[0]["status"] in ("succeeded", "failed") else None

    [run] = wait_until(finished, timeout=60, message="the v1 run to finish")
    assert run["status"] == "succeeded", run
    assert run["version"] == 1
    assert [s["id"] for s in run["steps"]] == ["call", "v1-only"]


# --- runs ---------------------------------------------------------------------------------------
def test_runs_are_listed_newest_first_and_paginated_with_before_and_limit(call):
    made = make_runs("paged", 5)
    expected = [r.pk for r in reversed(made)]

    seen, pages, url = [], 0, "/api/v1/runs?limit=2"
    while url:
        body = call("get", url, role="viewer").json()
        seen += [r["id"] for r in body["runs"]]
        pages += 1
        url = "/api/v1/runs" + body["next"] if "next" in body else None
        assert pages <= 4

    assert seen == expected
    assert pages == 3


def test_the_next_link_keeps_the_workflow_filter(call):
    mine = []
    for _ in range(3):
        mine += make_runs("mine", 1)
        make_runs("other", 1)

    first = call("get", "/api/v1/runs?workflow=mine&limit=2").json()
    query = parse_qs(urlsplit(first["next"]).query)
    second = call("get", "/api/v1/runs" + first["next"]).json()

    assert query["workflow"] == ["mine"]
    ids = [r["id"] for r in first["runs"] + second["runs"]]
    assert ids == [r.pk for r in reversed(mine)]
    assert {r["workflow"] for r in first["runs"] + second["runs"]} == {"mine"}


def test_runs_can_be_filtered_by_status(call):
    made = make_runs("status", 3)
    Run.objects.filter(pk=made[1].pk).update(status="failed")

    body = call("get", "/api/v1/runs?status=failed").json()

    assert [r["id"] for r in body["runs"]] == [made[1].pk]
    assert "next" not in body


@pytest.mark.parametrize("query", ["limit=abc", "before=x", "limit=0", "limit=-3"])
def test_a_bad_page_query_answers_400_problem(call, query):
    make_runs("q", 2)

    assert_problem(call("get", f"/api/v1/runs?{query}"), 400)


def test_a_run_is_returned_with_its_steps(call):
    [run] = make_runs("one-run", 1)

    body = call("get", f"/api/v1/runs/{run.pk}", role="viewer").json()

    assert body["id"] == run.pk
    assert body["workflow"] == "one-run"
    assert body["version"] == 1
    assert body["status"] == "queued"
    assert body["steps"] == []
    assert {"created_at", "started_at", "finished_at", "event", "error"} <= set(body)


def test_an_unknown_run_answers_404_problem(call):
    problem = assert_problem(call("get", "/api/v1/runs/987654321"), 404)

    assert "987654321" in problem["detail"]


# --- roles --------------------------------------------------------------------------------------
def test_a_viewer_token_cannot_change_or_publish_a_workflow(call):
    put_workflow(slug="guarded", raw=definition(log_step("a")))

    assert_problem(
        call("put", "/api/v1/workflows/guarded", definition(log_step("b")), role="viewer"), 403
    )
    assert_problem(call("post", "/api/v1/workflows/guarded/publish", role="viewer"), 403)
    assert Workflow.objects.get(slug="guarded").draft == definition(log_step("a"))
    assert not WorkflowVersion.objects.exists()


def test_a_viewer_token_can_read(call):
    put_workflow(slug="readable", raw=definition(log_step("a")))

    assert call("get", "/api/v1/workflows/readable", role="viewer").status_code == 200
    assert call("get", "/api/v1/runs", role="viewer").status_code == 200


def test_the_runs_api_needs_a_token(client, db):
    assert_problem(client.get("/api/v1/runs"), 401)
    assert_problem(client.get("/api/v1/workflows/x"), 401)
