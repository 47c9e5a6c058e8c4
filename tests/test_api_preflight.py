"""Problems every run would hit (workflows/authoring/preflight.py: reads of missing steps or
fields, addresses the outbound guard refuses) stop a publish over the API and the command
line as they stop one in the editor: 422 problem+json naming each problem's step, nothing
published. Draft writes keep the draft and answer the problems, as the editor shows them
while it saves."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from jsonschema import Draft202012Validator

from tests.accounts import sign_in
from tests.factories import definition, http_step, log_step
from workflows.access.roles import ensure_groups
from workflows.access.tokens import create_api_token
from workflows.api.openapi import description
from workflows.authoring import drafts
from workflows.authoring.definitions import put_workflow
from workflows.catalog.models import Workflow

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"
RUNS_WOULD_FAIL = "https://signalbox.dev/problems/runs-would-fail"

# Well formed, but every run would fail: `notify` reads a step that is not there, and
# `call` posts to a private address the guard refuses (only loopback is allowed in tests).
BROKEN = definition(
    log_step("start"),
    log_step("notify", after=("start",), message="order {{ steps.charge.output.id }}"),
    http_step("call", "http://10.0.0.8/hook", after=("start",)),
)
FIXED = definition(
    log_step("start"),
    log_step("notify", after=("start",), message="order {{ steps.start.output.message }}"),
    http_step("call", "http://127.0.0.1:9/hook", after=("start",)),
)


@pytest.fixture
def call(client):
    _token, plaintext = create_api_token(name="ci", role="editor")

    def send(method: str, path: str, body=None, **headers):
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body)
        return client.generic(
            method.upper(),
            "/api/v1" + path,
            data=data,
            content_type=headers.pop("content_type", "application/json"),
            headers={"Authorization": f"Bearer {plaintext}", **headers},
        )

    return send


def refusal(response) -> dict:
    assert response.status_code == 422, response.content[:500]
    assert response["Content-Type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == RUNS_WOULD_FAIL
    assert body["status"] == 422
    return body


def by_step(errors: list[dict]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for error in errors:
        found.setdefault(error["step"], []).append(f"{error['path']} {error['message']}")
    return found


# --- POST /workflows/<slug>/publish ----------------------------------------------------------
def test_publishing_a_draft_every_run_would_fail_on_is_refused_with_each_problem_and_its_step(
    call,
):
    put_workflow(slug="shop", raw=BROKEN)

    body = refusal(call("post", "/workflows/shop/publish", {"note": "go"}))

    problems = by_step(body["errors"])
    assert set(problems) == {"notify", "call"}
    [read] = problems["notify"]
    assert read.startswith("/steps/1/config/message reads steps.charge")
    [guarded] = problems["call"]
    assert guarded.startswith("/steps/2/config/url the outbound guard will refuse 10.0.0.8")
    assert "2 problem(s)" in body["detail"]
    shop = Workflow.objects.get(slug="shop")
    assert shop.published_version is None
    assert not shop.versions.filter(kind="published").exists()


def test_the_api_refuses_exactly_what_the_editor_refuses(call):
    put_workflow(slug="shop", raw=BROKEN)
    ensure_groups()
    editor = sign_in(Client(), "eddie", "editor")

    page = editor.post(
        "/workflows/shop/edit/publish",
        {"definition": json.dumps(BROKEN), "note": "go"},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    body = refusal(call("post", "/workflows/shop/publish"))

    assert 'id="publish-refused"' in page
    shown = [(p.path, p.message) for p in drafts.check_draft(BROKEN)]
    assert [(e["path"], e["message"]) for e in body["errors"]] == shown
    assert Workflow.objects.get(slug="shop").published_version is None


def test_a_fixed_draft_publishes_and_an_allowlisted_address_is_no_problem(call, settings):
    put_workflow(slug="shop", raw=FIXED)
    published = call("post", "/workflows/shop/publish")
    assert published.status_code == 201, published.content
    assert published.json()["version"] == 1

    settings.SIGNALBOX_OUTBOUND_ALLOW = ["127.0.0.1/32", "10.0.0.0/8"]
    guarded_only = definition(http_step("call", "http://10.0.0.8/hook"))
    put_workflow(slug="intranet", raw=guarded_only)
    assert call("post", "/workflows/intranet/publish").status_code == 201


def test_a_draft_that_is_not_well_formed_is_still_a_400_with_the_format_problems(call):
    saved = call("put", "/workflows/shop/draft", {"name": "x", "steps": [{"id": "Bad"}]})
    assert saved.status_code == 201, saved.content

    refused = call("post", "/workflows/shop/publish")

    assert refused.status_code == 400
    assert refused.json()["type"].endswith("/invalid-definition")


# --- draft writes answer the problems -----------------------------------------------------------
def test_putting_a_workflow_stores_the_draft_and_answers_what_a_publish_would_refuse(call):
    created = call("put", "/workflows/shop", BROKEN)
    assert created.status_code == 201, created.content
    assert set(by_step(created.json()["problems"])) == {"notify", "call"}
    assert Workflow.objects.get(slug="shop").draft == BROKEN

    fixed = call("put", "/workflows/shop", FIXED)
    assert fixed.status_code == 200
    assert fixed.json()["problems"] == []


# --- POST /workflows/<slug>/import ---------------------------------------------------------------
def test_an_import_that_publishes_is_refused_whole_when_runs_would_fail(call):
    put_workflow(slug="shop", raw=FIXED)

    body = refusal(call("post", "/workflows/shop/import?publish=true", BROKEN))

    assert set(by_step(body["errors"])) == {"notify", "call"}
    shop = Workflow.objects.get(slug="shop")
    assert shop.draft == FIXED  # the new draft was taken back with the publish
    assert shop.published_version is None
    refusal(call("post", "/workflows/new-shop/import?publish=true", BROKEN))
    assert not Workflow.objects.filter(slug="new-shop").exists()


def test_an_import_into_the_draft_keeps_it_and_answers_its_problems(call):
    imported = call("post", "/workflows/shop/import", BROKEN)

    assert imported.status_code == 201, imported.content
    assert set(by_step(imported.json()["problems"])) == {"notify", "call"}
    assert Workflow.objects.get(slug="shop").draft == BROKEN


# --- manage.py workflows import ------------------------------------------------------------------
def test_the_cli_refuses_to_publish_a_file_every_run_would_fail_on(tmp_path):
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(BROKEN))

    with pytest.raises(CommandError) as refused:
        call_command("workflows", "import", str(path), "--publish", stdout=StringIO())

    said = str(refused.value)
    assert "was not published" in said and "nothing was changed" in said
    assert "step 'notify' /steps/1/config/message: reads steps.charge" in said
    assert "step 'call' /steps/2/config/url: the outbound guard will refuse 10.0.0.8" in said
    assert not Workflow.objects.filter(slug="shop").exists()


def test_the_cli_imports_a_draft_and_warns_of_what_a_publish_would_refuse(tmp_path):
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(BROKEN))
    out, err = StringIO(), StringIO()

    call_command("workflows", "import", str(path), stdout=out, stderr=err)

    assert out.getvalue().strip() == f"shop: draft created from {path}"
    warning = err.getvalue()
    assert warning.startswith("warning: publishing shop would be refused")
    assert "step 'notify' /steps/1/config/message" in warning
    assert "step 'call' /steps/2/config/url" in warning
    assert Workflow.objects.get(slug="shop").draft == BROKEN


def test_the_cli_publishes_a_clean_file_without_a_warning(tmp_path):
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(FIXED))
    out, err = StringIO(), StringIO()

    call_command("workflows", "import", str(path), "--publish", stdout=out, stderr=err)

    assert out.getvalue().strip().endswith("published as v1")
    assert err.getvalue() == ""


# --- as workflows/api/openapi.yaml describes them -------------------------------------------------
def described(ref: str) -> Draft202012Validator:
    return Draft202012Validator({**description(), "$ref": ref})


def test_the_refusal_and_the_problems_of_draft_writes_are_answered_as_described(call):
    paths = description()["paths"]
    publish = paths["/api/v1/workflows/{slug}/publish"]["post"]["responses"]
    imported = paths["/api/v1/workflows/{slug}/import"]["post"]["responses"]
    assert publish["422"] == imported["422"] == {"$ref": "#/components/responses/RunsWouldFail"}
    refused = described(
        "#/components/responses/RunsWouldFail/content/application~1problem+json/schema"
    )

    put = call("put", "/workflows/shop", BROKEN)
    imported_draft = call("post", "/workflows/other/import", BROKEN)
    publish_refused = call("post", "/workflows/shop/publish")

    assert list(described("#/components/schemas/WrittenWorkflow").iter_errors(put.json())) == []
    assert list(described("#/components/schemas/Imported").iter_errors(imported_draft.json())) == []
    assert list(refused.iter_errors(refusal(publish_refused))) == []
