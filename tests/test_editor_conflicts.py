"""Two people editing the same draft never silently overwrite each other: every save bumps
the draft's revision, a save based on an older revision is refused (409 / 412 with who saved
last and when) unless forced, publishing needs the current revision, and open editors hear
of every save over their socket."""

from __future__ import annotations

import json
import re
import threading

import pytest
import yaml
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone

from orchestrator.asgi import application
from tests.accounts import sign_in
from tests.factories import definition, log_step
from tests.waiting import wait_until
from workflows.access.models import AuditEntry
from workflows.access.tokens import create_api_token
from workflows.authoring import drafts
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.runs.models import Run

EDIT = "/workflows/{}/edit/"
PROBLEM_JSON = "application/problem+json"


def saved(slug: str = "shop") -> Workflow:
    return Workflow.objects.get(slug=slug)


def first(**config) -> dict:
    return definition(log_step("greet", **config))


@pytest.fixture
def shop(db) -> Workflow:
    workflow, _ = put_workflow(slug="shop", raw=first())
    return workflow


@pytest.fixture
def alice(db) -> Client:
    return sign_in(Client(), "alice", "editor")


@pytest.fixture
def bob(db) -> Client:
    return sign_in(Client(), "bob", "editor")


def autosave(client: Client, raw: dict, *, base: int | None, force: bool = False):
    body = {"definition": raw, "revision": 3, "client": "page-1"}
    if base is not None:
        body["baseRevision"] = base
    if force:
        body["force"] = True
    return client.post(
        EDIT.format("shop") + "draft", json.dumps(body), content_type="application/json"
    )


def hx_post(client: Client, path: str, *, base: int, raw: dict | None = None, **data):
    if raw is not None:
        data["definition"] = json.dumps(raw)
    return client.post(path, data, HTTP_HX_REQUEST="true", HTTP_X_DRAFT_REVISION=str(base))


def hhmm(workflow: Workflow) -> str:
    return timezone.localtime(workflow.updated_at).strftime("%H:%M")


# --- the service -----------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_kind_of_draft_write_bumps_the_revision_and_names_who_wrote():
    workflow, _ = put_workflow(slug="shop", raw=first())
    assert workflow.draft_revision == 0
    publish_workflow(slug="shop")

    drafts.save_draft(workflow=workflow, raw=first(message="one"), by="alice")
    assert (saved().draft_revision, saved().draft_updated_by) == (1, "alice")
    assert workflow.draft_revision == 1

    drafts.restore_version(workflow=workflow, number=1, by="bob")
    assert (saved().draft_revision, saved().draft_updated_by) == (2, "bob")

    drafts.import_definition(
        slug="shop", body=json.dumps(first(message="two")).encode(), yaml_format=False, by="cy"
    )
    assert (saved().draft_revision, saved().draft_updated_by) == (3, "cy")

    put_workflow(slug="shop", raw=first(message="three"))
    assert saved().draft_revision == 4
    assert saved().draft["steps"][0]["config"]["message"] == "three"


@pytest.mark.django_db
def test_a_save_based_on_an_older_revision_is_refused_and_changes_nothing(shop):
    drafts.save_draft(workflow=shop, raw=first(message="alice's"), by="alice", base_revision=0)
    stale = Workflow.objects.get(pk=shop.pk)
    stale.draft_revision = 0  # what Bob's page still holds

    with pytest.raises(drafts.DraftConflict) as refused:
        drafts.save_draft(workflow=stale, raw=first(message="bob's"), by="bob", base_revision=0)

    conflict = refused.value
    assert (conflict.revision, conflict.base_revision, conflict.saved_by) == (1, 0, "alice")
    assert conflict.saved_at == saved().updated_at
    assert conflict.message.startswith(f"alice changed this workflow at {hhmm(saved())}")
    assert saved().draft["steps"][0]["config"]["message"] == "alice's"
    assert saved().draft_revision == 1


@pytest.mark.django_db
def test_a_forced_save_overwrites_the_newer_revision_and_is_audited(shop):
    drafts.save_draft(workflow=shop, raw=first(message="alice's"), by="alice", base_revision=0)

    drafts.save_draft(
        workflow=shop, raw=first(message="bob's"), by="bob", base_revision=0, force=True
    )

    assert saved().draft["steps"][0]["config"]["message"] == "bob's"
    assert (saved().draft_revision, saved().draft_updated_by) == (2, "bob")
    entry = AuditEntry.objects.get(action="workflow.draft_overwrite")
    assert (entry.actor, entry.target_id) == ("bob", "shop")
    assert entry.details == {
        "revision": 2,
        "base_revision": 0,
        "overwrote_revision": 1,
        "overwrote_by": "alice",
    }


@pytest.mark.django_db
def test_saving_what_is_already_stored_is_no_new_revision_and_no_conflict(shop):
    drafts.save_draft(workflow=shop, raw=first(message="same"), by="alice", base_revision=0)

    drafts.save_draft(workflow=shop, raw=first(message="same"), by="bob", base_revision=0)

    assert (saved().draft_revision, saved().draft_updated_by) == (1, "alice")


@pytest.mark.django_db
def test_publishing_with_a_stale_revision_is_refused_and_publishes_nothing(shop):
    drafts.save_draft(workflow=shop, raw=first(message="alice's"), by="alice", base_revision=0)
    stale = Workflow.objects.get(pk=shop.pk)

    with pytest.raises(drafts.DraftConflict):
        drafts.publish_draft(workflow=stale, by="bob", base_revision=0)
    with pytest.raises(drafts.DraftConflict):
        drafts.publish_draft(workflow=stale, by="bob", raw=first(message="bob's"), base_revision=0)

    assert not WorkflowVersion.objects.exists()
    version = drafts.publish_draft(workflow=stale, by="bob", base_revision=1)
    assert version.definition["steps"][0]["config"]["message"] == "alice's"


@pytest.mark.django_db(transaction=True)
def test_a_save_waits_for_one_in_progress_and_is_then_refused_against_it():
    workflow, _ = put_workflow(slug="shop", raw=first())
    outcome: dict = {}

    def bobs_save():
        try:
            drafts.save_draft(
                workflow=Workflow.objects.get(slug="shop"),
                raw=first(message="bob's"),
                by="bob",
                base_revision=0,
            )
            outcome["saved"] = True
        except drafts.DraftConflict as exc:
            outcome["refused"] = (exc.revision, exc.saved_by)
        finally:
            connection.close()

    with transaction.atomic():
        # Alice's save holds the row until her transaction commits.
        drafts.save_draft(
            workflow=workflow, raw=first(message="alice's"), by="alice", base_revision=0
        )
        racer = threading.Thread(target=bobs_save)
        racer.start()

        def racer_waits_on_a_lock() -> bool:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return cursor.fetchone()[0] > 0

        wait_until(racer_waits_on_a_lock, timeout=15, message="Bob's save to wait for Alice's")
        assert racer.is_alive()
    racer.join(timeout=15)

    assert outcome == {"refused": (1, "alice")}
    assert saved().draft["steps"][0]["config"]["message"] == "alice's"


@pytest.mark.django_db(transaction=True)
def test_of_two_saves_at_once_on_the_same_revision_exactly_one_wins():
    put_workflow(slug="shop", raw=first())
    start = threading.Barrier(2)
    results: dict[str, str] = {}

    def save(name: str):
        try:
            workflow = Workflow.objects.get(slug="shop")
            start.wait(timeout=15)
            drafts.save_draft(workflow=workflow, raw=first(message=name), by=name, base_revision=0)
            results[name] = "saved"
        except drafts.DraftConflict:
            results[name] = "refused"
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results.values()) == ["refused", "saved"]
    [winner] = [name for name, result in results.items() if result == "saved"]
    assert saved().draft["steps"][0]["config"]["message"] == winner
    assert (saved().draft_revision, saved().draft_updated_by) == (1, winner)


# --- the editor's views ---------------------------------------------------------------------
def test_the_editor_page_embeds_the_revision_it_shows(alice, shop):
    drafts.save_draft(workflow=shop, raw=first(message="x"), by="bob")

    page = alice.get(EDIT.format("shop")).content.decode()

    config = json.loads(
        re.search(r'id="editor-config" type="application/json">(.*?)</script>', page, re.S).group(1)
    )
    assert config["draftRevision"] == 1
    assert config["savedBy"] == "bob"
    assert 'id="conflict-banner"' in page


def test_autosave_on_the_current_revision_answers_the_new_one(alice, shop):
    response = autosave(alice, first(message="mine"), base=0)

    assert response.status_code == 200
    assert response.json()["draftRevision"] == 1
    assert response.json()["revision"] == 3  # the page's own edit counter, echoed
    assert (saved().draft_revision, saved().draft_updated_by) == (1, "alice")


def test_autosave_on_a_stale_revision_is_a_409_problem_naming_who_saved_and_when(alice, bob, shop):
    assert autosave(alice, first(message="alice's"), base=0).status_code == 200

    response = autosave(bob, first(message="bob's"), base=0)

    assert response.status_code == 409
    assert response["Content-Type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"].endswith("/draft-conflict")
    assert (body["revision"], body["base_revision"], body["saved_by"]) == (1, 0, "alice")
    assert body["saved_at"] == saved().updated_at.isoformat()
    assert f"alice changed this workflow at {hhmm(saved())}" in body["detail"]
    assert saved().draft["steps"][0]["config"]["message"] == "alice's"


def test_autosave_with_force_overwrites_and_says_so_in_the_audit(alice, bob, shop):
    autosave(alice, first(message="alice's"), base=0)

    response = autosave(bob, first(message="bob's"), base=0, force=True)

    assert response.status_code == 200
    assert response.json()["draftRevision"] == 2
    assert saved().draft["steps"][0]["config"]["message"] == "bob's"
    assert AuditEntry.objects.filter(action="workflow.draft_overwrite", actor="bob").exists()


def test_reload_reads_the_stored_draft_with_its_revision_and_problems(bob, shop):
    drafts.save_draft(workflow=shop, raw=definition(log_step("x"), log_step("x")), by="alice")

    body = bob.get(EDIT.format("shop") + "draft").json()

    assert body["definition"] == saved().draft
    assert (body["revision"], body["savedBy"]) == (1, "alice")
    assert body["problems"] and body["nodes"]["steps"]


def test_a_viewer_may_reload_the_draft_but_not_save_it(db, shop):
    viewer = sign_in(Client(), "vera", "viewer")

    assert viewer.get(EDIT.format("shop") + "draft").status_code == 200
    assert autosave(viewer, first(message="x"), base=0).status_code == 403


def conflict_fragment(response) -> str:
    assert response.status_code == 409
    page = response.content.decode()
    assert 'id="draft-conflict"' in page
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_publishing_a_stale_revision_answers_the_panel_with_the_conflict(alice, bob, shop):
    autosave(alice, first(message="alice's"), base=0)

    response = hx_post(bob, EDIT.format("shop") + "publish", base=0, raw=shop.draft, note="go")

    text = conflict_fragment(response)
    assert f"alice changed this workflow at {hhmm(saved())}" in text
    assert "nothing was published" in text
    assert 'id="publish-panel"' in response.content.decode()
    trigger = json.loads(response["HX-Trigger"])["editor:conflict"]
    assert (trigger["revision"], trigger["saved_by"]) == (1, "alice")
    assert saved().published_version is None
    assert saved().draft["steps"][0]["config"]["message"] == "alice's"


def test_publishing_the_current_revision_tells_the_page_the_revision_it_published(alice, shop):
    response = hx_post(
        alice, EDIT.format("shop") + "publish", base=0, raw=first(message="new"), note="go"
    )

    events = json.loads(response["HX-Trigger"])
    assert events["editor:published"] == {"version": 1}
    assert events["editor:draft"]["revision"] == 1
    assert saved().published_version.definition["steps"][0]["config"]["message"] == "new"


def test_restoring_or_importing_over_a_stale_revision_is_refused_with_the_panel(alice, bob, shop):
    publish_workflow(slug="shop")
    autosave(alice, first(message="alice's"), base=0)
    upload = SimpleUploadedFile("new.yaml", yaml.safe_dump(first(message="file")).encode())

    restored = hx_post(bob, EDIT.format("shop") + "versions/1/restore", base=0)
    imported = bob.post(
        EDIT.format("shop") + "import",
        {"file": upload},
        HTTP_HX_REQUEST="true",
        HTTP_X_DRAFT_REVISION="0",
    )

    assert "nothing was restored" in conflict_fragment(restored)
    assert 'id="versions-panel"' in restored.content.decode()
    assert "nothing was imported" in conflict_fragment(imported)
    assert saved().draft["steps"][0]["config"]["message"] == "alice's"
    assert saved().draft_revision == 1


def test_restoring_on_the_current_revision_reloads_the_canvas_with_the_new_revision(alice, shop):
    publish_workflow(slug="shop")
    autosave(alice, first(message="alice's"), base=0)

    response = hx_post(alice, EDIT.format("shop") + "versions/1/restore", base=1)

    events = json.loads(response["HX-Trigger"])
    assert events["editor:reload"]["draftRevision"] == 2
    assert events["editor:draft"]["revision"] == 2


def test_trying_a_stale_canvas_is_refused_and_runs_nothing(alice, bob, shop):
    autosave(alice, first(message="alice's"), base=0)

    response = hx_post(
        bob, EDIT.format("shop") + "try", base=0, raw=first(message="bob's"), sample="typed"
    )

    assert "nothing was run" in conflict_fragment(response)
    assert not Run.objects.exists()


# --- the API: ETag, If-Match and base_revision -------------------------------------------------
@pytest.fixture
def api(db) -> Client:
    _token, plaintext = create_api_token(name="ci", role="editor")
    return Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")


def put(api: Client, path: str, raw: dict, **headers):
    return api.put(path, json.dumps(raw), content_type="application/json", **headers)


def test_the_api_shows_the_draft_revision_as_etag(api, shop):
    drafts.save_draft(workflow=shop, raw=first(message="x"), by="alice")

    response = api.get("/api/v1/workflows/shop")

    assert response["ETag"] == '"1"'
    assert response.json()["draft_revision"] == 1


def test_an_api_put_without_a_precondition_replaces_the_draft_as_before(api, shop):
    drafts.save_draft(workflow=shop, raw=first(message="x"), by="alice")

    response = put(api, "/api/v1/workflows/shop", first(message="api"))

    assert response.status_code == 200
    assert response["ETag"] == '"2"'
    assert (saved().draft_revision, saved().draft_updated_by) == (2, "token:ci")


def test_an_api_put_with_the_current_etag_is_stored_and_answers_the_next_one(api, shop):
    response = put(api, "/api/v1/workflows/shop", first(message="api"), HTTP_IF_MATCH='"0"')

    assert response.status_code == 200
    assert response["ETag"] == '"1"'
    assert response.json()["draft_revision"] == 1


def test_an_api_put_with_a_stale_etag_is_a_412_conflict_and_changes_nothing(api, shop):
    drafts.save_draft(workflow=shop, raw=first(message="alice's"), by="alice")

    response = put(api, "/api/v1/workflows/shop", first(message="api"), HTTP_IF_MATCH='"0"')

    assert response.status_code == 412
    assert response["Content-Type"] == PROBLEM_JSON
    assert response["ETag"] == '"1"'
    body = response.json()
    assert body["type"].endswith("/draft-conflict")
    assert (body["revision"], body["saved_by"]) == (1, "alice")
    assert saved().draft["steps"][0]["config"]["message"] == "alice's"


def test_an_api_put_with_a_stale_base_revision_is_a_409(api, shop):
    drafts.save_draft(workflow=shop, raw=first(message="alice's"), by="alice")

    stale = put(api, "/api/v1/workflows/shop?base_revision=0", first(message="api"))
    malformed = put(api, "/api/v1/workflows/shop?base_revision=x", first(message="api"))

    assert stale.status_code == 409
    assert stale.json()["type"].endswith("/draft-conflict")
    assert malformed.status_code == 400
    assert saved().draft["steps"][0]["config"]["message"] == "alice's"


def test_if_match_on_a_workflow_that_does_not_exist_fails_and_creates_nothing(api, db):
    response = put(api, "/api/v1/workflows/fresh", first(), HTTP_IF_MATCH='"0"')

    assert response.status_code == 412
    assert not Workflow.objects.filter(slug="fresh").exists()


def test_the_api_draft_endpoint_and_restore_honour_if_match(api, shop):
    publish_workflow(slug="shop")
    drafts.save_draft(workflow=shop, raw=first(message="alice's"), by="alice")

    draft = put(api, "/api/v1/workflows/shop/draft", first(message="api"), HTTP_IF_MATCH='"0"')
    restore = api.post("/api/v1/workflows/shop/versions/1/restore", HTTP_IF_MATCH='"0"')
    current = put(api, "/api/v1/workflows/shop/draft", {"name": "x"}, HTTP_IF_MATCH='W/"1"')

    assert (draft.status_code, restore.status_code) == (412, 412)
    assert current.status_code == 200
    assert current["ETag"] == '"2"'
    assert current.json()["draft_revision"] == 2


def test_publishing_over_the_api_with_a_stale_revision_is_refused(api, shop):
    drafts.save_draft(workflow=shop, raw=first(message="alice's"), by="alice")

    by_header = api.post(
        "/api/v1/workflows/shop/publish", {}, content_type="application/json", HTTP_IF_MATCH='"0"'
    )
    by_body = api.post(
        "/api/v1/workflows/shop/publish", {"base_revision": 0}, content_type="application/json"
    )
    assert (by_header.status_code, by_body.status_code) == (412, 409)
    assert not WorkflowVersion.objects.exists()

    current = api.post(
        "/api/v1/workflows/shop/publish",
        {"note": "seen", "base_revision": 1},
        content_type="application/json",
    )
    plain = api.post("/api/v1/workflows/shop/publish", {}, content_type="application/json")
    assert (current.status_code, plain.status_code) == (201, 201)


# --- the editor's socket ---------------------------------------------------------------------
ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture
async def close_socket_connections():
    yield
    await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
async def test_the_editor_socket_tells_an_open_canvas_when_someone_saves_the_draft(
    close_socket_connections,
):
    def setup():
        put_workflow(slug="shop", raw=first())
        put_workflow(slug="other", raw=first())
        return f"sessionid={sign_in(Client(), 'vera', 'viewer').cookies['sessionid'].value}"

    cookie = await database_sync_to_async(setup)()
    ws = WebsocketCommunicator(
        application, "/ws/workflows/shop/editor/", headers=[(b"cookie", cookie.encode()), ORIGIN]
    )
    connected, _ = await ws.connect(timeout=10)
    try:
        assert connected
        assert (await ws.receive_json_from(timeout=10))["type"] == "runs"

        # Asked on (re)connect: the revision now, so a save missed while away is seen.
        await ws.send_json_to({"draft": 0})
        snapshot = await ws.receive_json_from(timeout=10)
        assert (snapshot["type"], snapshot["revision"]) == ("draft", 0)

        def bob_saves():
            # Another workflow's save first: it must not reach this socket.
            other = Workflow.objects.get(slug="other")
            drafts.save_draft(workflow=other, raw=first(message="elsewhere"), by="cy")
            shop = Workflow.objects.get(slug="shop")
            drafts.save_draft(
                workflow=shop, raw=first(message="bob's"), by="bob", base_revision=0, client="p2"
            )
            return Workflow.objects.get(slug="shop")

        shop = await database_sync_to_async(bob_saves)()
        frame = await ws.receive_json_from(timeout=10)
        assert frame == {
            "type": "draft",
            "revision": 1,
            "by": "bob",
            "at": shop.updated_at.isoformat(),
            "client": "p2",
        }
    finally:
        await ws.disconnect()
