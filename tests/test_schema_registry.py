"""The schema registry end to end through Django: the /api/v1/schemas API, ingest validation
over HTTP against registered versions, and the dashboard pages and forms."""

from __future__ import annotations

import json
import threading

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction

from tests.factories import cloudevent
from tests.waiting import wait_until
from workflows.access.roles import ensure_groups
from workflows.access.tokens import create_api_token
from workflows.events.models import Event, EventSchema, EventType
from workflows.events.schemas import IncompatibleSchema, register_schema

TYPE = "com.example.order.placed"
BASE = f"/api/v1/schemas/{TYPE}"
PROBLEM = "application/problem+json"

# v1: an order with an id and a total; closed, so optional fields can be added compatibly.
V1 = {
    "type": "object",
    "properties": {"order": {"type": "integer"}, "total": {"type": "number", "minimum": 0}},
    "required": ["order"],
    "additionalProperties": False,
}
# v2: adds an optional currency. Old data never has it (the model was closed): BACKWARD ok.
V2 = {
    **V1,
    "properties": {**V1["properties"], "currency": {"enum": ["EUR", "USD"]}},
}
# v3: makes currency required and drops USD: old data may lack it or hold USD.
V3 = {
    **V2,
    "properties": {**V2["properties"], "currency": {"enum": ["EUR"]}},
    "required": ["order", "currency"],
}


class Api:
    """The Django test client with a bearer token of one role."""

    def __init__(self, client, role: str):
        _row, token = create_api_token(name=f"{role}-schemas", role=role)
        self.client, self.auth = client, {"Authorization": f"Bearer {token}"}

    def get(self, path: str):
        return self.client.get(path, headers=self.auth)

    def put(self, path: str, body):
        return self.client.put(
            path, data=json.dumps(body), content_type="application/json", headers=self.auth
        )

    def post(self, path: str, body, content_type: str = "application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body)
        return self.client.post(path, data=data, content_type=content_type, headers=self.auth)

    def register(self, schema, type_: str = TYPE):
        return self.post(f"/api/v1/schemas/{type_}/versions", {"schema": schema})

    def send(self, event: dict):
        return self.post("/api/v1/events", event, content_type="application/cloudevents+json")


@pytest.fixture
def editor(client, db) -> Api:
    return Api(client, "editor")


@pytest.fixture
def viewer(client, db) -> Api:
    return Api(client, "viewer")


def problem_of(response, status: int) -> dict:
    assert response.status_code == status, response.content[:800]
    assert response["Content-Type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    return body


# --- registering through the API -------------------------------------------------------------


def test_registering_a_first_version_answers_201_with_its_dataschema_uri(editor):
    response = editor.register(V1)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["version"] == 1
    assert body["created"] is True
    assert body["dataschema"] == f"http://testserver{BASE}/versions/1"
    assert response["Location"] == body["dataschema"]
    assert EventType.objects.get(name=TYPE).compatibility == "BACKWARD"


def test_a_compatible_second_version_is_stored_as_version_2(editor):
    editor.register(V1)

    response = editor.register(V2)

    assert response.status_code == 201, response.content
    assert response.json()["version"] == 2
    assert list(
        EventSchema.objects.filter(event_type__name=TYPE).values_list("version", flat=True)
    ) == [2, 1]


def test_a_breaking_version_is_refused_with_409_listing_the_incompatibilities(editor):
    editor.register(V1)
    editor.register(V2)

    body = problem_of(editor.register(V3), 409)

    assert body["type"].endswith("/incompatible-schema")
    assert body["compatibility"] == "BACKWARD"
    assert body["against_version"] == 2
    reasons = {(r["path"], r["message"]) for r in body["incompatibilities"]}
    assert reasons == {
        (
            "/required",
            "property 'currency' became required: old data may lack it, which the "
            "new schema rejects",
        ),
        (
            "/properties/currency/enum",
            'enum value "USD" was removed: old data may hold it, which the new schema rejects',
        ),
    }
    assert "not BACKWARD compatible with v2" in body["detail"]
    assert EventSchema.objects.filter(event_type__name=TYPE).count() == 2


def test_a_forward_type_refuses_a_widened_enum_that_backward_would_accept(editor):
    assert editor.put(BASE, {"compatibility": "FORWARD"}).status_code == 201
    editor.register({"enum": ["EUR"]})

    body = problem_of(editor.register({"enum": ["EUR", "USD"]}), 409)

    assert [r["direction"] for r in body["incompatibilities"]] == ["FORWARD"]
    assert "was added: new data may hold it" in body["incompatibilities"][0]["message"]


def test_a_type_in_none_mode_accepts_any_change(editor):
    editor.put(BASE, {"compatibility": "NONE"})
    editor.register(V1)

    response = editor.register({"type": "array", "items": {"type": "string"}})

    assert response.status_code == 201, response.content
    assert response.json()["version"] == 2


def test_registering_the_latest_schema_again_stores_nothing_new(editor):
    editor.register(V1)

    response = editor.register(json.loads(json.dumps(V1)))

    assert response.status_code == 200
    assert response.json()["created"] is False and response.json()["version"] == 1
    assert EventSchema.objects.count() == 1


def test_a_schema_can_be_posted_as_the_raw_schema_json_body(editor):
    response = editor.post(f"{BASE}/versions", V1, content_type="application/schema+json")

    assert response.status_code == 201, response.content
    assert EventSchema.objects.get().schema == V1


def test_an_invalid_json_schema_gets_400_naming_the_problem(editor):
    body = problem_of(
        editor.register({"type": "object", "properties": {"a": {"type": "txt"}}}), 400
    )

    assert body["type"].endswith("/invalid-schema")
    assert [e["path"] for e in body["errors"]] == ["/properties/a/type"]
    assert not EventSchema.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b"{not json", "application/json", 400, id="broken_json"),
        pytest.param(json.dumps(V1).encode(), "application/json", 400, id="schema_not_wrapped"),
        pytest.param(json.dumps({"schema": V1}).encode(), "text/plain", 415, id="wrong_type"),
    ],
)
def test_a_malformed_registration_gets_a_problem_not_a_crash(editor, body, content_type, status):
    problem_of(editor.post(f"{BASE}/versions", body, content_type=content_type), status)
    assert not EventSchema.objects.exists()


def test_a_viewer_can_read_the_registry_but_cannot_register_a_schema(editor, viewer):
    editor.register(V1)

    body = problem_of(viewer.register(V2), 403)
    assert "editor" in body["detail"]
    problem_of(viewer.put(BASE, {"compatibility": "NONE"}), 403)
    assert viewer.get("/api/v1/schemas").status_code == 200
    assert viewer.get(f"{BASE}/versions/1").status_code == 200
    assert EventSchema.objects.count() == 1
    assert EventType.objects.get(name=TYPE).compatibility == "BACKWARD"


def test_the_registry_needs_a_token(client, db):
    problem_of(client.get("/api/v1/schemas"), 401)


def test_put_creates_a_type_then_updates_its_compatibility_and_description(editor):
    created = editor.put(BASE, {"compatibility": "full", "description": "An order was placed"})
    updated = editor.put(BASE, {"compatibility": "NONE"})

    assert created.status_code == 201 and updated.status_code == 200
    assert updated.json() | {"created_at": None} == {
        "name": TYPE,
        "description": "An order was placed",
        "compatibility": "NONE",
        "latest_version": None,
        "versions": 0,
        "dataschema": None,
        "created_at": None,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [({"compatibility": "SIDEWAYS"}, "compatibility"), ({"description": 42}, "description")],
)
def test_put_refuses_an_unknown_mode_or_a_bad_description(editor, body, field):
    problem = problem_of(editor.put(BASE, body), 400)

    assert field in [error["field"] for error in problem["errors"]]
    assert not EventType.objects.exists()


def test_put_refuses_a_type_name_that_is_not_url_safe(editor):
    problem = problem_of(editor.put("/api/v1/schemas/bad%20name", {}), 400)

    assert [error["field"] for error in problem["errors"]] == ["name"]


def test_listing_shows_every_type_with_its_latest_version(editor):
    editor.register(V1)
    editor.register(V2)
    editor.put("/api/v1/schemas/com.example.empty", {"description": "no schema yet"})

    listed = {t["name"]: t for t in editor.get("/api/v1/schemas").json()["event_types"]}

    assert listed[TYPE]["latest_version"] == 2 and listed[TYPE]["versions"] == 2
    assert listed[TYPE]["dataschema"].endswith(f"{BASE}/versions/2")
    assert listed["com.example.empty"]["latest_version"] is None


def test_a_version_is_served_as_schema_json_by_number_and_as_latest(editor):
    editor.register(V1)
    editor.register(V2)

    first = editor.get(f"{BASE}/versions/1")
    latest = editor.get(f"{BASE}/versions/latest")
    listed = editor.get(f"{BASE}/versions").json()

    assert first["Content-Type"] == "application/schema+json"
    assert json.loads(first.content) == V1
    assert json.loads(latest.content) == V2 and latest["Schema-Version"] == "2"
    assert [v["version"] for v in listed["versions"]] == [2, 1]
    assert listed["versions"][0]["created_by"] == "token:editor-schemas"


def test_an_unknown_type_or_version_is_a_404_problem(editor):
    editor.register(V1)

    problem_of(editor.get(f"{BASE}/versions/9"), 404)
    problem_of(editor.get("/api/v1/schemas/com.example.nothing/versions/1"), 404)
    problem_of(editor.get("/api/v1/schemas/com.example.nothing"), 404)


# --- ingest over HTTP validates against the registry ---------------------------------------


def test_an_event_is_validated_against_the_latest_version(editor):
    editor.register(V1)
    editor.register(V2)

    accepted = editor.send(cloudevent(data={"order": 1, "currency": "USD"}))

    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["validation"] == "valid"
    assert Event.objects.get().schema_version == 2


def test_an_event_naming_a_version_in_dataschema_is_validated_against_that_version(editor):
    v1 = editor.register(V1).json()["dataschema"]
    editor.register(V2)
    with_currency = {"order": 1, "currency": "USD"}  # valid under v2; v1 is closed

    refused = editor.send(cloudevent(data=with_currency, dataschema=v1))
    pinned = editor.send(cloudevent(data={"order": 2}, dataschema=v1))
    latest = editor.send(cloudevent(data=with_currency))

    body = problem_of(refused, 400)
    assert body["errors"][0]["schema_version"] == 1
    assert body["errors"][0]["errors"][0]["message"] == (
        "Additional properties are not allowed ('currency' was unexpected)"
    )
    assert pinned.status_code == 202 and latest.status_code == 202
    assert sorted(Event.objects.values_list("schema_version", flat=True)) == [1, 2]


def test_an_event_naming_an_unregistered_version_is_refused(editor):
    editor.register(V1)

    response = editor.send(cloudevent(dataschema=f"http://testserver{BASE}/versions/7"))

    body = problem_of(response, 400)
    assert "not registered" in body["errors"][0]["errors"][0]["message"]


def test_an_event_that_breaks_its_schema_gets_400_listing_the_schema_errors(editor):
    editor.register(V1)

    body = problem_of(editor.send(cloudevent(data={"order": "seven", "total": -1})), 400)

    assert body["type"].endswith("/schema-violation")
    [violation] = body["errors"]
    assert violation["type"] == TYPE and violation["schema_version"] == 1
    assert {e["path"] for e in violation["errors"]} == {"/order", "/total"}
    assert any("'seven' is not of type 'integer'" in e["message"] for e in violation["errors"])
    assert not Event.objects.exists()


@pytest.mark.parametrize("registered", [False, True], ids=["unknown_type", "type_without_schema"])
def test_an_event_of_a_type_without_a_schema_is_accepted_and_marked_unvalidated(editor, registered):
    if registered:
        editor.put(BASE, {"description": "no schema yet"})

    response = editor.send(cloudevent(data={"anything": ["goes"]}))

    assert response.status_code == 202, response.content
    assert response.json()["validation"] == "unvalidated"
    assert Event.objects.get().schema_version is None


# --- two registrations at once ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_registration_waits_for_one_in_progress_and_is_checked_against_it():
    register_schema(event_type=TYPE, schema=V1)
    outcome: dict = {}

    def second():
        try:
            saved, _created = register_schema(event_type=TYPE, schema=V3)
            outcome["version"] = saved.version
        except IncompatibleSchema as exc:
            outcome["refused_against"] = exc.against_version
        finally:
            connection.close()

    with transaction.atomic():
        # Hold the type's row lock, as a first registration does while it stores v2.
        EventType.objects.select_for_update().get(name=TYPE)
        racer = threading.Thread(target=second)
        racer.start()

        def racer_waits_on_a_lock() -> bool:
            with connection.cursor() as cursor:
                # Inside a transaction the statistics views are a snapshot: refresh it.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return cursor.fetchone()[0] > 0

        wait_until(racer_waits_on_a_lock, timeout=15, message="the second registration to wait")
        assert racer.is_alive(), "the second registration did not wait for the lock"
        EventSchema.objects.create(
            event_type=EventType.objects.get(name=TYPE), version=2, schema=V2
        )
    racer.join(timeout=10)

    assert outcome == {"refused_against": 2}
    assert sorted(EventSchema.objects.values_list("version", flat=True)) == [1, 2]


# --- the dashboard ------------------------------------------------------------------------


@pytest.fixture
def login(client, db):
    def as_role(role: str):
        ensure_groups()
        user = get_user_model().objects.create_user(username=f"{role}-user", password="pw")
        user.groups.add(Group.objects.get(name=role))
        client.force_login(user)
        return client

    return as_role


HTMX = {"HX-Request": "true"}


def test_the_registry_pages_show_types_and_pretty_printed_versions_to_a_viewer(login):
    register_schema(event_type=TYPE, schema=V1, created_by="alice")
    browser = login("viewer")

    listing = browser.get("/schemas/").content.decode()
    page = browser.get(f"/schemas/{TYPE}/").content.decode()

    assert f'href="/schemas/{TYPE}/"' in listing and "v1" in listing
    assert ">Schemas</a>" in listing
    assert "&quot;additionalProperties&quot;: false" in page  # indented JSON, escaped
    assert "  &quot;required&quot;: [\n    &quot;order&quot;\n  ]" in page
    assert f"{BASE}/versions/1" in page and "by alice" in page
    assert 'id="register-form"' not in page and 'id="compatibility-form"' not in page


def test_a_viewer_cannot_register_a_version_from_the_dashboard(login):
    register_schema(event_type=TYPE, schema=V1)
    browser = login("viewer")

    response = browser.post(f"/schemas/{TYPE}/versions/", {"schema": json.dumps(V2)})

    assert response.status_code == 403
    assert EventSchema.objects.count() == 1


def test_an_editor_registers_a_version_with_the_htmx_form(login):
    register_schema(event_type=TYPE, schema=V1)
    browser = login("editor")
    assert 'id="register-form"' in browser.get(f"/schemas/{TYPE}/").content.decode()

    response = browser.post(f"/schemas/{TYPE}/versions/", {"schema": json.dumps(V2)}, headers=HTMX)

    html = response.content.decode()
    assert response.status_code == 200
    assert html.startswith('<div id="schema-panel">')  # the partial, not a whole page
    assert "Registered version 2." in html and 'id="version-2"' in html
    assert EventSchema.objects.get(version=2).created_by == "editor-user"


def test_a_breaking_version_from_the_form_is_refused_with_the_reasons_inline(login):
    register_schema(event_type=TYPE, schema=V1)
    browser = login("editor")

    response = browser.post(f"/schemas/{TYPE}/versions/", {"schema": json.dumps(V3)}, headers=HTMX)

    html = response.content.decode()
    assert response.status_code == 200
    assert "Refused: not BACKWARD compatible with version 1" in html
    assert "property &#x27;currency&#x27; became required" in html
    assert "&quot;EUR&quot;" in html  # the submitted text is kept for fixing
    assert not EventSchema.objects.filter(version=2).exists()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("{oops", "This is not JSON", id="not_json"),
        pytest.param('{"type": "nope"}', "This is not a valid JSON Schema", id="invalid_schema"),
        pytest.param("[]", "a schema must be a JSON object", id="not_an_object"),
    ],
)
def test_a_bad_schema_in_the_form_is_shown_inline_without_a_server_error(login, text, shown):
    register_schema(event_type=TYPE, schema=V1)
    browser = login("editor")

    with_htmx = browser.post(f"/schemas/{TYPE}/versions/", {"schema": text}, headers=HTMX)
    without = browser.post(f"/schemas/{TYPE}/versions/", {"schema": text})

    assert with_htmx.status_code == 200 and shown in with_htmx.content.decode()
    assert without.status_code == 400 and shown in without.content.decode()
    assert EventSchema.objects.count() == 1


def test_an_editor_changes_the_compatibility_mode_from_the_page(login):
    register_schema(event_type=TYPE, schema=V1)
    browser = login("editor")

    changed = browser.post(
        f"/schemas/{TYPE}/compatibility/", {"compatibility": "FULL"}, headers=HTMX
    )
    refused = browser.post(
        f"/schemas/{TYPE}/compatibility/", {"compatibility": "LOOSE"}, headers=HTMX
    )

    assert "Compatibility set to FULL." in changed.content.decode()
    assert (
        refused.status_code == 200
        and "one of BACKWARD, FORWARD, FULL, NONE" in refused.content.decode()
    )
    assert EventType.objects.get(name=TYPE).compatibility == "FULL"


def test_an_editor_creates_an_event_type_from_the_list_page(login):
    browser = login("editor")

    created = browser.post("/schemas/", {"name": TYPE, "compatibility": "FORWARD"}, headers=HTMX)
    again = browser.post("/schemas/", {"name": TYPE, "compatibility": "FORWARD"}, headers=HTMX)
    bad = browser.post("/schemas/", {"name": "has space", "compatibility": "NONE"}, headers=HTMX)

    assert created["HX-Redirect"] == f"/schemas/{TYPE}/"
    assert EventType.objects.get(name=TYPE).compatibility == "FORWARD"
    assert "already registered" in again.content.decode()
    assert bad.status_code == 200 and "letters, digits" in bad.content.decode()
    assert EventType.objects.count() == 1


def test_an_unknown_type_page_is_a_404(login):
    assert login("viewer").get("/schemas/com.example.nothing/").status_code == 404
