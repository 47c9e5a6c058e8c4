"""The editor's API: export and import round trip, invalid drafts stored with their problems,
versions, diffs, restore, try, and a viewer token that reads but cannot change.
"""

from __future__ import annotations

import pytest
from django.test import Client

from tests.editor_pages import put_shop
from tests.factories import definition, log_step
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.runs.models import Run


@pytest.fixture
def shop(db) -> Workflow:
    return put_shop()


@pytest.fixture
def api(db):
    _token, plaintext = create_api_token(name="editor-tests", role="editor")
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")


@pytest.fixture
def read_only_api(db):
    _token, plaintext = create_api_token(name="viewer-tests", role="viewer")
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")


def test_the_api_exports_and_imports_round_trip(api, shop):
    exported = api.get("/api/v1/workflows/shop/export", {"format": "yaml"})
    assert exported.status_code == 200

    imported = api.post(
        "/api/v1/workflows/shop-copy/import?publish=true",
        exported.content,
        content_type="application/yaml",
    )

    assert imported.status_code == 201
    assert imported.json()["published_version"] == 1
    assert Workflow.objects.get(slug="shop-copy").draft == shop.draft


def test_an_invalid_api_import_is_a_400_with_every_problem_and_changes_nothing(api, shop):
    response = api.post(
        "/api/v1/workflows/shop/import",
        {"name": "x", "steps": [{"id": "a", "kind": "log"}, {"id": "b", "kind": "nope"}]},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert [e["path"] for e in response.json()["errors"]] == ["/steps/0/config", "/steps/1/kind"]
    shop.refresh_from_db()
    assert shop.draft["steps"][0]["id"] == "charge"


def test_the_api_stores_an_invalid_draft_and_lists_its_problems(api, db):
    response = api.put(
        "/api/v1/workflows/sketch/draft",
        {"name": "Sketch", "steps": []},
        content_type="application/json",
    )

    assert response.status_code == 201
    assert response.json()["valid"] is False
    assert response.json()["problems"][0]["path"] == "/steps"
    assert Workflow.objects.get(slug="sketch").draft == {"name": "Sketch", "steps": []}


def test_the_api_lists_versions_diffs_and_restores(api, shop):
    publish_workflow(slug="shop", note="one")
    put_workflow(slug="shop", raw=definition(log_step("other")))
    publish_workflow(slug="shop", note="two")

    versions = api.get("/api/v1/workflows/shop/versions").json()["versions"]
    diff = api.get("/api/v1/workflows/shop/diff", {"from": "1", "to": "2"}).json()
    restored = api.post("/api/v1/workflows/shop/versions/1/restore")

    assert [(v["number"], v["note"], v["live"]) for v in versions] == [
        (2, "two", True),
        (1, "one", False),
    ]
    assert {s["id"]: s["change"] for s in diff["steps"]} == {
        "other": "added",
        "charge": "removed",
        "done": "removed",
    }
    assert restored.status_code == 200
    shop.refresh_from_db()
    assert shop.draft["steps"][0]["id"] == "charge"
    assert shop.published_version.number == 2


def test_the_api_tries_a_draft(api, shop):
    response = api.post(
        "/api/v1/workflows/shop/try", {"data": {"order": 1}}, content_type="application/json"
    )

    assert response.status_code == 202
    run = Run.objects.get(pk=response.json()["run"])
    assert (run.origin, run.version.kind) == ("try", "snapshot")


def test_a_viewer_token_reads_but_cannot_change(read_only_api, shop):
    assert read_only_api.get("/api/v1/workflows/shop/versions").status_code == 200
    assert read_only_api.get("/api/v1/workflows/shop/export").status_code == 200
    assert (
        read_only_api.put(
            "/api/v1/workflows/shop/draft", "{}", content_type="application/json"
        ).status_code
        == 403
    )
    assert (
        read_only_api.post(
            "/api/v1/workflows/shop/try", {"data": {}}, content_type="application/json"
        ).status_code
        == 403
    )
    assert not WorkflowVersion.objects.exists()
