"""The editor's pages and panels: who may do what, the canvas and palette, autosave of
invalid drafts, config panels rendered from the kinds' schemas, trigger and settings forms.

Publishing, versions, try and files are in test_editor_draft_actions.py, the API in
test_editor_api.py, the socket in test_editor_socket.py.
"""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests.accounts import sign_in
from tests.editor_pages import EDIT, apply_first_step, error_box, post, put_shop, trigger_of
from tests.factories import definition, http_step
from workflows.authoring import drafts
from workflows.authoring.definitions import put_workflow
from workflows.catalog.models import Workflow
from workflows.events.schemas import register_schema


@pytest.fixture
def editor(client, db):
    return sign_in(client, "eddie", "editor")


@pytest.fixture
def shop(db) -> Workflow:
    return put_shop()


@pytest.fixture
def viewer(db):
    return sign_in(Client(), "vera", "viewer")


def test_an_editor_gets_the_canvas_with_a_grouped_palette_and_the_draft(editor, shop):
    page = editor.get(EDIT.format("shop")).content.decode()

    assert 'id="editor-canvas"' in page
    assert 'data-palette-kind="http_request"' in page
    assert 'data-palette-trigger="schedule"' in page
    for group in ("Triggers", "Actions", "Flow"):
        assert f"<h3>{group}</h3>" in page
    config = json.loads(
        re.search(r'id="editor-config" type="application/json">(.*?)</script>', page, re.S).group(1)
    )
    assert config["canEdit"] is True
    assert config["draft"] == shop.draft
    assert config["kinds"]["condition"]["ports"] == ["true", "false", "failure"]
    assert config["problems"] == []


def test_a_viewer_sees_the_canvas_read_only(viewer, shop):
    page = viewer.get(EDIT.format("shop")).content.decode()

    assert 'id="editor-canvas"' in page
    assert 'id="read-only-badge"' in page
    assert "data-palette-kind" not in page
    assert 'data-panel="publish"' not in page
    assert '"canEdit": false' in page


def test_a_viewer_cannot_save_publish_try_or_import(viewer, shop):
    url = EDIT.format("shop")
    assert viewer.post(url + "draft", "{}", content_type="application/json").status_code == 403
    assert post(viewer, url + "publish", shop.draft, note="x").status_code == 403
    assert post(viewer, url + "try", shop.draft, sample="typed", data="{}").status_code == 403
    assert post(viewer, url + "step/apply", shop.draft, index=0).status_code == 403
    assert viewer.post(url + "versions/1/restore").status_code == 403
    assert (
        viewer.post(url + "import", {"file": SimpleUploadedFile("a.json", b"{}")}).status_code
        == 403
    )
    shop.refresh_from_db()
    assert shop.published_version is None


def test_a_team_workflow_is_refused_to_others_and_open_to_members(client, db):
    team = Group.objects.create(name="payments")
    drafts.create_workflow(slug="secret", name="", by="x", team=team)
    member = sign_in(Client(), "mia", "editor", "payments")
    outsider = sign_in(Client(), "olga", "editor")
    admin = sign_in(Client(), "adam", "admin")

    assert outsider.get(EDIT.format("secret")).status_code == 404
    assert (
        outsider.post(
            EDIT.format("secret") + "draft", "{}", content_type="application/json"
        ).status_code
        == 404
    )
    assert member.get(EDIT.format("secret")).status_code == 200
    assert admin.get(EDIT.format("secret")).status_code == 200


def test_the_editor_page_of_an_unknown_workflow_is_a_404(editor):
    assert editor.get(EDIT.format("nope")).status_code == 404


def test_a_new_workflow_starts_on_an_empty_canvas(editor):
    response = editor.post("/workflows/new/", {"slug": "fresh", "name": "Fresh one"})

    assert response.status_code == 302
    assert response["Location"] == EDIT.format("fresh")
    workflow = Workflow.objects.get(slug="fresh")
    assert workflow.draft == {"name": "Fresh one", "triggers": [], "steps": []}


def test_a_new_workflow_from_an_invalid_file_lists_the_problems_and_creates_nothing(editor):
    upload = SimpleUploadedFile("w.yaml", b"name: x\nsteps: []\n")

    page = editor.post("/workflows/new/", {"slug": "from-file", "file": upload})

    assert page.status_code == 200
    assert "/steps" in page.content.decode()
    assert "should be non-empty" in page.content.decode()
    assert not Workflow.objects.filter(slug="from-file").exists()


# --- autosave ------------------------------------------------------------------------------
def test_autosave_stores_an_invalid_draft_and_answers_problems_per_node(editor, shop):
    raw = dict(shop.draft)
    raw["steps"] = [*raw["steps"], {"id": "mail", "kind": "send_email", "config": {}}]

    response = editor.post(
        EDIT.format("shop") + "draft",
        json.dumps({"definition": raw, "revision": 7}),
        content_type="application/json",
    )

    body = response.json()
    assert response.status_code == 200
    assert body["revision"] == 7
    assert sorted(body["nodes"]["steps"]["2"]) == [
        "config: 'body' is a required property",
        "config: 'subject' is a required property",
        "config: 'to' is a required property",
    ]
    assert body["ports"]["1"] == ["success", "failure"]
    shop.refresh_from_db()
    assert shop.draft == raw
    assert shop.draft_updated_by == "eddie"


def test_autosave_refuses_what_cannot_be_stored(editor, shop):
    response = editor.post(
        EDIT.format("shop") + "draft",
        json.dumps({"definition": [1]}),
        content_type="application/json",
    )

    assert response.status_code == 400
    assert "JSON object" in response.json()["error"]


# --- the config panel ------------------------------------------------------------------------
def test_a_step_panel_renders_the_kinds_schema_as_a_form(editor, shop):
    page = post(editor, EDIT.format("shop") + "step", shop.draft, index=0).content.decode()

    assert 'data-step-id="charge"' in page
    assert re.search(r'<label for="f-config-url">URL <span class="req"', page)
    assert 'name="config.url" value="https://pay.example.com/charge"' in page
    assert '<select id="f-config-method" name="config.method">' in page
    assert '<option value="GET">GET</option>' in page
    assert 'type="checkbox" id="f-config-send_event"' in page
    assert 'name="config.headers"' in page and '<span class="tag">JSON</span>' in page
    assert 'type="number" step="any" id="f-config-timeout_seconds"' in page
    assert "Leaves through" in page


def test_expression_fields_list_event_fields_from_the_schema_and_upstream_outputs(editor, db):
    register_schema(
        event_type="com.example.order.placed",
        schema={
            "type": "object",
            "properties": {
                "total": {"type": "number", "description": "in cents"},
                "customer": {"type": "object", "properties": {"email": {"type": "string"}}},
            },
        },
    )
    raw = definition(
        http_step("charge", "https://x.example"),
        {"id": "big", "kind": "condition", "config": {"expression": "true"}, "after": ["charge"]},
    )
    put_workflow(slug="vars", raw=raw)

    page = post(editor, EDIT.format("vars") + "step", raw, index=1).content.decode()

    assert "event.data of com.example.order.placed (schema v1)" in page
    assert 'data-insert="event.data.total"' in page and "in cents" in page
    assert 'data-insert="event.data.customer.email"' in page
    assert 'data-insert="steps.charge.output.status"' in page
    assert '<span class="tag">CEL</span>' in page


def test_applying_the_form_returns_the_step_and_inline_errors(editor, shop):
    response = apply_first_step(
        editor,
        shop,
        {
            "config.url": "ftp://nope",
            "config.method": "PUT",
            "config.headers": '{"X-A": "1"',
            "step.id": "charge",
            "retry.max_attempts": "3",
        },
    )

    applied = trigger_of(response, "editor:apply")
    html = response.content.decode()
    assert applied["what"] == "step"
    assert applied["step"]["config"] == {"method": "PUT", "url": "ftp://nope"}
    assert applied["step"]["retry"] == {"max_attempts": 3}
    assert "does not match" in error_box(html, "config-url")
    assert "not valid JSON" in error_box(html, "config-headers")
    assert 'hx-swap-oob="true"' in html


def test_a_required_field_left_empty_is_marked_required(editor, shop):
    response = apply_first_step(editor, shop, {"config.url": "", "step.id": "charge"})

    assert error_box(response.content.decode(), "config-url") == "required"
    assert "url" not in trigger_of(response, "editor:apply")["step"]["config"]


def test_renaming_a_step_in_the_form_is_reported_for_the_canvas_to_follow(editor, shop):
    response = apply_first_step(
        editor, shop, {"config.url": "https://pay.example.com/charge", "step.id": "pay"}
    )

    applied = trigger_of(response, "editor:apply")
    assert applied["renamed"] == ["charge", "pay"]
    assert applied["step"]["id"] == "pay"


def test_a_step_id_taken_by_another_step_is_refused(editor, shop):
    response = apply_first_step(
        editor, shop, {"config.url": "https://pay.example.com/charge", "step.id": "done"}
    )

    assert "already called 'done'" in error_box(response.content.decode(), "step-id")
    assert trigger_of(response, "editor:apply")["step"]["id"] == "charge"


def test_cel_errors_show_as_you_type(editor, shop):
    def check(field: str, mode: str, text: str) -> str:
        url = EDIT.format("shop") + "check"
        return post(editor, url, field=field, mode=mode, **{field: text}).content.decode()

    bad = check("config.expression", "expression", "event.data.total >")
    good = check("config.expression", "expression", "event.data.total > 1")
    template = check("config.message", "template", "order {{ event.data. }}")

    assert "✗ syntax error" in bad
    assert "✓ valid expression" in good
    assert "✗" in template


def test_a_trigger_panel_and_its_form(editor, shop):
    page = post(editor, EDIT.format("shop") + "trigger", shop.draft, index=0).content.decode()
    assert 'value="com.example.order.placed"' in page

    response = post(
        editor,
        EDIT.format("shop") + "trigger/apply",
        shop.draft,
        index=0,
        **{"trigger.event": "com.example.order.paid", "trigger.filter": "event.data.total >"},
    )

    applied = trigger_of(response, "editor:apply")
    assert applied == {
        "what": "trigger",
        "index": 0,
        "trigger": {"event": "com.example.order.paid", "filter": "event.data.total >"},
    }
    assert "invalid expression" in error_box(response.content.decode(), "trigger-filter")


def test_the_trigger_form_keeps_where_the_trigger_is_drawn(editor, shop):
    raw = {**shop.draft, "triggers": [{"event": "a.b", "position": {"x": -300, "y": 60}}]}

    response = post(
        editor, EDIT.format("shop") + "trigger/apply", raw, index=0, **{"trigger.event": "c.d"}
    )

    assert trigger_of(response, "editor:apply")["trigger"] == {
        "event": "c.d",
        "position": {"x": -300, "y": 60},
    }


def test_the_workflow_settings_form(editor, shop):
    response = post(
        editor,
        EDIT.format("shop") + "settings/apply",
        shop.draft,
        **{"workflow.name": "Shop", "workflow.vars": '{"fee": 2}', "workflow.max_runs": "4"},
    )

    settings = trigger_of(response, "editor:apply")["settings"]
    assert settings == {
        "name": "Shop",
        "description": None,
        "vars": {"fee": 2},
        "concurrency": {"max_runs": 4},
    }


def test_the_workflows_page_links_to_the_editor_and_to_a_new_workflow(viewer, shop):
    page = viewer.get("/workflows/").content.decode()

    assert f'href="{EDIT.format("shop")}" class="edit-link">Edit</a>' in page
    assert 'href="/workflows/new/" id="new-workflow"' in page


@pytest.mark.parametrize("retry_on", [5, True, "timeout", None])
def test_a_hand_edited_retry_on_of_the_wrong_type_still_opens_the_step_panel(
    editor, shop, retry_on
):
    raw = json.loads(json.dumps(shop.draft))
    raw["steps"][0]["retry"] = {"max_attempts": 2, "retry_on": retry_on}

    response = post(editor, EDIT.format("shop") + "step", raw, index=0)

    assert response.status_code == 200
    shown = re.search(r'name="retry.retry_on"[^>]*value="([^"]*)"', response.content.decode())
    assert shown and shown.group(1) == ("" if retry_on is None else str(retry_on))
