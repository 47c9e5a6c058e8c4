"""The editor's pages, panels and socket, and its API: who may do what, forms rendered from
config schemas, autosave of invalid drafts, publish, versions, diff, restore, try, files."""

from __future__ import annotations

import json
import re
from html import unescape as html_unescape

import pytest
import yaml
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client

from orchestrator.asgi import application
from tests.accounts import sign_in
from tests.factories import definition, http_step, log_step
from tests.sockets import send_run_changed
from workflows.access.tokens import create_api_token
from workflows.authoring import drafts
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.events.schemas import register_schema
from workflows.live import notify
from workflows.runs.models import Run, StepRun

EDIT = "/workflows/{}/edit/"


@pytest.fixture
def editor(client, db):
    return sign_in(client, "eddie", "editor")


@pytest.fixture
def viewer(db):
    return sign_in(Client(), "vera", "viewer")


@pytest.fixture
def shop(db) -> Workflow:
    raw = definition(
        http_step("charge", "https://pay.example.com/charge"),
        log_step("done", after=("charge",)),
    )
    workflow, _ = put_workflow(slug="shop", raw=raw)
    return workflow


def post(client: Client, path: str, raw: dict | None = None, **data):
    if raw is not None:
        data["definition"] = json.dumps(raw)
    return client.post(path, data, HTTP_HX_REQUEST="true")


def apply_first_step(client: Client, workflow: Workflow, form: dict[str, str]):
    """Submit the step form of the draft's first step with the `form` fields."""
    return post(client, EDIT.format(workflow.slug) + "step/apply", workflow.draft, index=0, **form)


def trigger_of(response, name: str):
    return json.loads(response["HX-Trigger"])[name]


def error_box(html: str, field: str) -> str:
    """The text of a field's error box (id err-<field>), tags removed."""
    found = re.search(rf'id="err-{re.escape(field)}"[^>]*>(.*?)</div>', html, re.S)
    assert found, f"no error box for {field}"
    return html_unescape(re.sub(r"<[^>]+>", " ", found.group(1))).strip()


# --- the page and who sees what ----------------------------------------------------------------
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


# --- publish, versions, diff, restore --------------------------------------------------------
def test_publish_refuses_an_invalid_draft_and_lists_the_problems(editor, shop):
    raw = definition({"id": "a", "kind": "log", "config": {}})

    page = post(editor, EDIT.format("shop") + "publish", raw, note="try").content.decode()

    assert 'id="publish-refused"' in page
    assert "/steps/0/config" in page and "required property" in page
    shop.refresh_from_db()
    assert shop.published_version is None
    assert shop.draft == raw  # kept, as it was on the canvas


def test_publish_freezes_the_canvas_into_a_version_with_a_note(editor, shop):
    response = post(editor, EDIT.format("shop") + "publish", shop.draft, note="first cut")

    assert trigger_of(response, "editor:published") == {"version": 1}
    shop.refresh_from_db()
    assert shop.published_version.note == "first cut"
    assert shop.published_version.published_by == "eddie"


def test_the_version_history_and_a_diff_between_two_versions(editor, shop):
    publish_workflow(slug="shop", note="one", published_by="ana")
    changed = json.loads(json.dumps(shop.draft))
    changed["steps"][0]["config"]["url"] = "https://pay.example.com/v2"
    changed["steps"].append(log_step("audit", after=("done",)))
    put_workflow(slug="shop", raw=changed)
    publish_workflow(slug="shop", note="two", published_by="eddie")

    history = editor.get(EDIT.format("shop") + "versions").content.decode()
    diff = editor.get(EDIT.format("shop") + "diff", {"from": "1", "to": "2"}).content.decode()

    assert history.index('id="version-2"') < history.index('id="version-1"')
    assert "by ana" in history and "one" in history
    assert 'id="diff-step-charge" data-change="changed"' in diff
    assert "https://pay.example.com/v2" in diff
    assert 'id="diff-step-audit" data-change="added"' in diff
    assert "done</code> —success→ <code>audit" in diff


def test_restoring_a_version_tells_the_canvas_to_reload_it(editor, shop):
    first = dict(shop.draft)
    publish_workflow(slug="shop")
    put_workflow(slug="shop", raw=definition(log_step("other")))

    response = editor.post(EDIT.format("shop") + "versions/1/restore", HTTP_HX_REQUEST="true")

    reload = trigger_of(response, "editor:reload")
    assert reload["definition"] == first
    assert "v1 restored into the draft" in response.content.decode()
    shop.refresh_from_db()
    assert shop.draft == first


# --- try it --------------------------------------------------------------------------------
def test_trying_the_canvas_with_typed_data_starts_a_try_run(editor, shop):
    response = post(
        editor,
        EDIT.format("shop") + "try",
        shop.draft,
        sample="typed",
        type="com.example.order.placed",
        data='{"order": 5}',
    )

    shown = trigger_of(response, "editor:show-run")
    run = Run.objects.get(pk=shown["run"])
    assert run.origin == "try"
    assert run.event.data == {"order": 5}
    assert run.version.kind == "snapshot"
    assert 'id="try-result"' in response.content.decode()


def test_bad_sample_json_is_shown_and_nothing_runs(editor, shop):
    page = post(
        editor, EDIT.format("shop") + "try", shop.draft, sample="typed", data="{nope"
    ).content.decode()

    assert "the data is not valid JSON" in page
    assert not Run.objects.exists()


def test_a_step_of_a_run_shows_its_input_output_and_error(editor, shop):
    version = publish_workflow(slug="shop")
    run = Run.objects.create(workflow=shop, version=version, status="failed")
    StepRun.objects.create(
        run=run,
        step_id="charge",
        kind="http_request",
        status="failed",
        input={"config": {"url": "https://pay.example.com/charge"}},
        error="POST https://pay.example.com/charge answered 400",
    )

    page = editor.get(EDIT.format("shop") + f"runs/{run.pk}/charge").content.decode()
    missing = editor.get(EDIT.format("shop") + f"runs/{run.pk}/done").content.decode()

    assert 'id="run-step-status">failed' in page
    assert "answered 400" in page
    assert "https://pay.example.com/charge" in page
    assert "Not reached" in missing


# --- files ---------------------------------------------------------------------------------
def test_export_downloads_the_draft_as_yaml(editor, shop):
    response = editor.get(EDIT.format("shop") + "export", {"format": "yaml"})

    assert response["Content-Disposition"] == 'attachment; filename="shop.yaml"'
    assert yaml.safe_load(response.content) == shop.draft


def test_an_invalid_import_lists_the_problems_and_keeps_the_draft(editor, shop):
    before = shop.draft
    upload = SimpleUploadedFile(
        "bad.json", json.dumps({"name": "x", "steps": [{"id": "a", "kind": "log"}]}).encode()
    )

    response = editor.post(EDIT.format("shop") + "import", {"file": upload}, HTTP_HX_REQUEST="true")

    page = response.content.decode()
    assert "HX-Trigger" not in response
    assert "bad.json: 1 problem(s); the draft was not changed" in page
    assert "/steps/0/config" in page
    shop.refresh_from_db()
    assert shop.draft == before


def test_a_valid_import_replaces_the_draft_and_reloads_the_canvas(editor, shop):
    raw = definition(log_step("imported"))
    upload = SimpleUploadedFile("new.yaml", yaml.safe_dump(raw).encode())

    response = editor.post(EDIT.format("shop") + "import", {"file": upload}, HTTP_HX_REQUEST="true")

    assert trigger_of(response, "editor:reload")["definition"] == raw
    shop.refresh_from_db()
    assert shop.draft == raw


# --- the API -------------------------------------------------------------------------------
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


# --- the editor's socket -------------------------------------------------------------------
ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture(autouse=False)
async def close_socket_connections():
    yield
    await sync_to_async(connections.close_all)()


def session_cookie(username: str, *groups: str) -> bytes:
    browser = sign_in(Client(), username, *groups)
    return f"sessionid={browser.cookies['sessionid'].value}".encode()


@pytest.mark.django_db(transaction=True)
async def test_the_socket_sends_the_runs_then_the_watched_runs_steps(close_socket_connections):
    def setup():
        put_workflow(slug="live", raw=definition(log_step("a")))
        version = publish_workflow(slug="live")
        run = Run.objects.create(
            workflow=Workflow.objects.get(slug="live"), version=version, status="running"
        )
        StepRun.objects.create(run=run, step_id="a", kind="log", status="running")
        return run, session_cookie("vera", "viewer")

    run, cookie = await database_sync_to_async(setup)()
    ws = WebsocketCommunicator(
        application, "/ws/workflows/live/editor/", headers=[(b"cookie", cookie), ORIGIN]
    )
    connected, _ = await ws.connect(timeout=10)
    try:
        assert connected
        runs = await ws.receive_json_from(timeout=10)
        assert runs["type"] == "runs"
        assert [(r["id"], r["status"]) for r in runs["runs"]] == [(run.pk, "running")]

        await ws.send_json_to({"watch": run.pk})
        frame = await ws.receive_json_from(timeout=10)
        assert frame["type"] == "run"
        assert frame["steps"]["a"]["status"] == "running"

        await database_sync_to_async(StepRun.objects.filter(run=run).update)(status="succeeded")
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=2, status="running", workflow="live"
        )
        frame = await ws.receive_json_from(timeout=10)
        assert frame["type"] == "run"
        assert frame["steps"]["a"]["status"] == "succeeded"
    finally:
        await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_socket_refuses_strangers_and_outsiders_of_a_team(close_socket_connections):
    def setup():
        team = Group.objects.create(name="payments")
        drafts.create_workflow(slug="secret", name="", by="x", team=team)
        return session_cookie("olga", "viewer")

    cookie = await database_sync_to_async(setup)()
    anonymous = WebsocketCommunicator(application, "/ws/workflows/secret/editor/", headers=[ORIGIN])
    outsider = WebsocketCommunicator(
        application, "/ws/workflows/secret/editor/", headers=[(b"cookie", cookie), ORIGIN]
    )
    missing = WebsocketCommunicator(
        application, "/ws/workflows/nothing/editor/", headers=[(b"cookie", cookie), ORIGIN]
    )

    assert await anonymous.connect(timeout=10) == (False, 4401)
    # 4404 for another team's workflow, as for a missing one: 4403 would reveal it.
    assert await outsider.connect(timeout=10) == (False, 4404)
    assert await missing.connect(timeout=10) == (False, 4404)


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
