"""What the editor does with a draft: publish it (or refuse an invalid one), the version
history, a diff and restore, try it with typed data, export and import it.
"""

from __future__ import annotations

import json

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.accounts import sign_in
from tests.editor_pages import EDIT, post, put_shop, trigger_of
from tests.factories import definition, log_step
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow
from workflows.runs.models import Run, StepRun


@pytest.fixture
def editor(client, db):
    return sign_in(client, "eddie", "editor")


@pytest.fixture
def shop(db) -> Workflow:
    return put_shop()


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
