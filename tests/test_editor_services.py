"""The editor's services: drafts saved invalid, problems placed on nodes, versions and their
diff, restoring, trying a draft, and definitions as files."""

from __future__ import annotations

import json

import pytest
import yaml
from django.contrib.auth.models import Group, User

from tests.factories import cloudevent, definition, http_step, log_step
from workflows.access.models import AuditEntry
from workflows.authoring import drafts
from workflows.authoring.definition_files import UnreadableDefinition
from workflows.authoring.definitions import parse_definition, publish_workflow, put_workflow
from workflows.catalog.models import TriggerSubscription, Workflow, WorkflowVersion
from workflows.core.definition import InvalidDefinition, Problem
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.events.schemas import SchemaViolation, register_schema
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db


def condition_step(step_id: str, expression: str, *, after: tuple[str, ...] = ()) -> dict:
    step = {"id": step_id, "kind": "condition", "config": {"expression": expression}}
    if after:
        step["after"] = list(after)
    return step


def branching() -> dict:
    return {
        "name": "Branching",
        "triggers": [{"event": "com.example.order.placed"}],
        "steps": [
            log_step("start"),
            condition_step("big", "event.data.total > 100", after=("start",)),
            log_step("yes"),
            log_step("no"),
        ],
        "edges": [
            {"from": "big", "to": "yes", "port": "true"},
            {"from": "big", "to": "no", "port": "false"},
        ],
    }


def user(name: str, *roles: str) -> User:
    person = User.objects.create_user(name, password="pw")
    for role in roles:
        person.groups.add(Group.objects.get_or_create(name=role)[0])
    return person


# --- drafts ----------------------------------------------------------------------------------
def test_an_invalid_draft_is_saved_and_its_problems_returned():
    workflow = drafts.create_workflow(slug="sketch", name="Sketch", by="eddie")
    raw = {"name": "Sketch", "steps": [{"id": "call", "kind": "http_request", "config": {}}]}

    problems = drafts.save_draft(workflow=workflow, raw=raw, by="eddie")

    workflow.refresh_from_db()
    assert workflow.draft == raw
    assert workflow.draft_updated_by == "eddie"
    assert problems == [Problem("/steps/0/config", "'url' is a required property")]
    assert workflow.published_version is None


def test_saving_a_draft_changes_nothing_that_runs():
    put_workflow(slug="live", raw=definition(log_step("a")))
    version = publish_workflow(slug="live")
    workflow = Workflow.objects.get(slug="live")

    drafts.save_draft(workflow=workflow, raw={"name": "Live", "steps": []}, by="eddie")

    workflow.refresh_from_db()
    assert workflow.published_version == version
    assert TriggerSubscription.objects.get(workflow=workflow).version == version


def test_a_draft_that_the_database_cannot_store_is_refused_and_the_old_one_kept():
    workflow = drafts.create_workflow(slug="nul", name="", by="eddie")
    before = dict(workflow.draft)

    with pytest.raises(drafts.DraftRefused, match="NUL"):
        drafts.save_draft(workflow=workflow, raw={"name": "a\x00b", "steps": []}, by="eddie")
    with pytest.raises(drafts.DraftRefused, match="object"):
        drafts.save_draft(workflow=workflow, raw=["not", "an", "object"], by="eddie")

    workflow.refresh_from_db()
    assert workflow.draft == before


def test_a_new_workflow_needs_a_slug_that_is_free_and_well_formed():
    drafts.create_workflow(slug="taken", name="", by="eddie")

    with pytest.raises(drafts.DraftRefused, match="already exists"):
        drafts.create_workflow(slug="taken", name="", by="eddie")
    with pytest.raises(drafts.DraftRefused, match="slug"):
        drafts.create_workflow(slug="no spaces", name="", by="eddie")


def test_problems_are_placed_on_the_steps_triggers_and_edges_they_concern():
    raw = branching()
    raw["steps"][0]["config"] = {}
    raw["triggers"].append({"event": "x", "filter": "event.data >"})
    raw["edges"].append({"from": "big", "to": "no", "port": "maybe"})

    nodes = drafts.node_problems(raw, drafts.check_draft(raw))

    assert nodes.steps[0] == ["config: 'message' is a required property"]
    assert any("invalid expression" in m for m in nodes.triggers[1])
    assert nodes.edges[2] == ["port: step 'big' has no port 'maybe' (it has: failure, false, true)"]
    # The edge's source step shows it too.
    assert any("edge to no" in m for m in nodes.steps[1])
    assert nodes.workflow == []


def test_a_cycle_is_shown_on_every_step_in_it():
    raw = definition(log_step("a", after=("b",)), log_step("b", after=("a",)))

    nodes = drafts.node_problems(raw, drafts.check_draft(raw))

    assert nodes.workflow == ["/steps: steps form a cycle: a -> b -> a"]
    assert set(nodes.steps) == {0, 1}


def test_ports_of_a_switch_follow_its_cases_and_failure_comes_last():
    switch = {
        "id": "s",
        "kind": "switch",
        "config": {"cases": [{"name": "big", "when": "true"}, {"name": "small", "when": "x"}]},
    }

    assert drafts.ports_of(switch) == ["big", "small", "default", "failure"]
    assert drafts.ports_of({"id": "f", "kind": "fail"}) == ["failure"]
    assert drafts.ports_of({"id": "c", "kind": "condition"}) == ["true", "false", "failure"]
    assert drafts.ports_of({"id": "u", "kind": "nope"}) == ["success", "failure"]


# --- publishing, versions, restore ---------------------------------------------------------------
def test_publishing_an_invalid_draft_is_refused_with_every_problem_and_the_draft_kept():
    workflow = drafts.create_workflow(slug="draft-only", name="", by="eddie")
    raw = {"name": "x", "steps": [{"id": "a", "kind": "log"}, {"id": "b", "kind": "nope"}]}

    with pytest.raises(InvalidDefinition) as refused:
        drafts.publish_draft(workflow=workflow, by="eddie", note="first", raw=raw)

    assert [p.path for p in refused.value.problems] == ["/steps/0/config", "/steps/1/kind"]
    workflow.refresh_from_db()
    assert workflow.draft == raw
    assert not workflow.versions.exists()


def test_publishing_records_the_note_and_who_published_and_audits_it():
    workflow = drafts.create_workflow(slug="notes", name="", by="eddie")

    version = drafts.publish_draft(
        workflow=workflow, by="eddie", note="first cut", raw=definition(log_step("a"))
    )

    assert (version.number, version.note, version.published_by) == (1, "first cut", "eddie")
    assert workflow.published_version == version
    entry = AuditEntry.objects.get(action="workflow.publish")
    assert (entry.actor, entry.target_id, entry.details) == ("eddie", "notes", {"version": 1})


def test_the_version_history_lists_published_versions_newest_first_without_snapshots():
    workflow = drafts.create_workflow(slug="history", name="", by="eddie")
    drafts.publish_draft(workflow=workflow, by="eddie", raw=definition(log_step("a")))
    drafts.publish_draft(workflow=workflow, by="ana", raw=definition(log_step("b")))
    WorkflowVersion.objects.create(workflow=workflow, kind="snapshot", definition={})

    history = drafts.published_versions(workflow)

    assert [(v.number, v.published_by) for v in history] == [(2, "ana"), (1, "eddie")]


def test_restoring_a_version_copies_it_into_the_draft_and_leaves_the_live_version_alone():
    workflow = drafts.create_workflow(slug="restore", name="", by="eddie")
    first = definition(log_step("a"), name="First")
    drafts.publish_draft(workflow=workflow, by="eddie", raw=first)
    live = drafts.publish_draft(
        workflow=workflow, by="eddie", raw=definition(log_step("b"), name="Second")
    )

    draft = drafts.restore_version(workflow=workflow, number=1, by="ana")

    workflow.refresh_from_db()
    assert draft == first == workflow.draft
    assert workflow.name == "First"
    assert workflow.draft_updated_by == "ana"
    assert workflow.published_version == live
    with pytest.raises(WorkflowVersion.DoesNotExist):
        drafts.restore_version(workflow=workflow, number=9, by="ana")


def test_runs_keep_the_version_they_started_with_after_a_new_publish():
    workflow = drafts.create_workflow(slug="pinned", name="", by="eddie")
    first = drafts.publish_draft(workflow=workflow, by="eddie", raw=definition(log_step("a")))
    run = Run.objects.create(workflow=workflow, version=first)

    drafts.publish_draft(workflow=workflow, by="eddie", raw=definition(log_step("b")))

    run.refresh_from_db()
    assert run.version == first
    assert run.version.definition["steps"][0]["id"] == "a"


# --- diff --------------------------------------------------------------------------------------
def test_the_diff_lists_added_removed_and_changed_steps_with_their_config_and_edges():
    before = branching()
    after = branching()
    after["steps"][1]["config"]["expression"] = "event.data.total > 500"
    after["steps"][0]["config"]["level"] = "warning"
    after["steps"][0]["retry"] = {"max_attempts": 3}
    after["steps"].pop(3)  # "no"
    after["edges"].pop(1)
    after["steps"].append(log_step("audit", after=("yes",)))
    after["steps"][2]["position"] = {"x": 10, "y": 20}  # moved only: not a change

    diff = drafts.diff_definitions(before, after)

    by_id = {s["id"]: s for s in diff["steps"]}
    assert set(by_id) == {"start", "big", "no", "audit"}
    assert by_id["big"]["change"] == "changed"
    assert by_id["big"]["config"] == [
        {
            "key": "expression",
            "change": "changed",
            "before": "event.data.total > 100",
            "after": "event.data.total > 500",
        }
    ]
    assert by_id["start"]["config"] == [
        {"key": "level", "change": "added", "before": None, "after": "warning"}
    ]
    assert by_id["start"]["fields"] == [
        {"field": "retry", "before": None, "after": {"max_attempts": 3}}
    ]
    assert by_id["no"]["change"] == "removed"
    assert by_id["audit"]["change"] == "added"
    assert diff["edges"]["added"] == [{"from": "yes", "to": "audit", "port": "success"}]
    assert diff["edges"]["removed"] == [{"from": "big", "to": "no", "port": "false"}]
    assert diff["changed"] is True


def test_an_after_list_and_the_same_success_edge_are_no_change():
    before = definition(log_step("a"), log_step("b", after=("a",)))
    after = definition(log_step("a"), log_step("b"))
    after["edges"] = [{"from": "a", "to": "b"}]

    diff = drafts.diff_definitions(before, after)

    assert diff["changed"] is False
    assert diff["steps"] == []


def test_a_trigger_or_step_that_only_moved_is_no_change():
    before = branching()
    before["triggers"].append({"webhook": "shop"})
    after = json.loads(json.dumps(before))
    after["triggers"][0]["position"] = {"x": -240, "y": 40}
    after["triggers"][1]["position"] = {"x": -240, "y": 170}
    after["steps"][0]["position"] = {"x": 80, "y": 40}

    diff = drafts.diff_definitions(before, after)

    assert diff["changed"] is False
    assert diff["triggers"] == {"added": [], "removed": []}
    assert diff["steps"] == []


def test_the_diff_shows_trigger_and_workflow_field_changes():
    before = definition(log_step("a"), name="Old")
    after = definition(log_step("a"), name="New", event="com.example.order.paid")
    after["triggers"][0]["filter"] = "event.data.total > 0"

    diff = drafts.diff_definitions(before, after)

    assert diff["workflow"] == [{"field": "name", "before": "Old", "after": "New"}]
    assert diff["triggers"] == {
        "added": ["event com.example.order.paid if event.data.total > 0"],
        "removed": ["event com.example.order.placed"],
    }


# --- try it --------------------------------------------------------------------------------
def test_trying_a_draft_with_a_stored_event_runs_a_snapshot_outside_the_bus():
    workflow = drafts.create_workflow(slug="tryme", name="", by="eddie")
    drafts.save_draft(
        workflow=workflow, raw=definition(log_step("a"), log_step("b", after=("a",))), by="eddie"
    )
    event, _ = ingest_event(envelope=from_structured(cloudevent(data={"order": 7})))

    run = drafts.try_draft(workflow=workflow, by="eddie", event_id=event.pk)

    assert run.origin == "try"
    assert run.event == event
    assert run.version.kind == "snapshot"
    assert run.version.number is None
    assert run.version.definition == workflow.draft
    assert run.status == "running"
    assert list(run.steps.values_list("step_id", "status")) == [("a", "queued")]
    assert run.journal.filter(kind="run.try").exists()
    # Nothing went live: the workflow has no published version and no subscription.
    workflow.refresh_from_db()
    assert workflow.published_version is None
    assert not TriggerSubscription.objects.filter(workflow=workflow).exists()


def test_trying_with_typed_data_stores_a_sample_event_that_never_reaches_the_bus():
    workflow = drafts.create_workflow(slug="typed", name="", by="eddie")
    raw = definition(log_step("a"), event="com.example.order.paid")

    run = drafts.try_draft(workflow=workflow, by="eddie", data={"total": 12}, raw=raw)

    event = run.event
    assert (event.type, event.data, event.channel) == (
        "com.example.order.paid",
        {"total": 12},
        "try",
    )
    assert event.source == "/signalbox/try/eddie"
    # Already marked published: the outbox relay never puts it on the bus.
    assert event.published_at is not None


def test_trying_an_invalid_draft_is_refused_and_starts_nothing():
    workflow = drafts.create_workflow(slug="broken", name="", by="eddie")

    with pytest.raises(InvalidDefinition):
        drafts.try_draft(workflow=workflow, by="eddie", data={"a": 1})

    assert not Run.objects.exists()
    assert not WorkflowVersion.objects.exists()
    assert not Event.objects.exists()


def test_typed_data_that_breaks_the_types_schema_is_refused():
    register_schema(
        event_type="com.example.order.paid",
        schema={
            "type": "object",
            "required": ["total"],
            "properties": {"total": {"type": "number"}},
        },
    )
    workflow = drafts.create_workflow(slug="schema", name="", by="eddie")
    drafts.save_draft(
        workflow=workflow, raw=definition(log_step("a"), event="com.example.order.paid"), by="eddie"
    )

    with pytest.raises(SchemaViolation):
        drafts.try_draft(workflow=workflow, by="eddie", data={"total": "lots"})

    assert not Run.objects.exists()


def test_recent_samples_are_events_of_the_triggers_types_newest_first():
    ingest_event(envelope=from_structured(cloudevent("com.example.order.placed")))
    ingest_event(envelope=from_structured(cloudevent("com.example.other")))
    newest, _ = ingest_event(envelope=from_structured(cloudevent("com.example.order.placed")))

    samples = drafts.recent_samples(slug="x", raw=definition(log_step("a")))

    assert [e.pk for e in samples][:1] == [newest.pk]
    assert {e.type for e in samples} == {"com.example.order.placed"}


# --- definitions as files ------------------------------------------------------------------------
def test_export_writes_the_draft_or_a_version_as_json_or_yaml():
    workflow = drafts.create_workflow(slug="exported", name="", by="eddie")
    v1 = definition(log_step("a"))
    drafts.publish_draft(workflow=workflow, by="eddie", raw=v1)
    drafts.save_draft(workflow=workflow, raw=definition(log_step("b")), by="eddie")

    name, text = drafts.export_definition(workflow=workflow, yaml_format=True)
    assert name == "exported.yaml"
    assert yaml.safe_load(text)["steps"][0]["id"] == "b"

    name, text = drafts.export_definition(workflow=workflow, yaml_format=False, version=1)
    assert name == "exported-v1.json"
    assert json.loads(text) == v1


def test_an_import_replaces_the_draft_and_can_publish_it_at_once():
    body = yaml.safe_dump(definition(log_step("a"), name="From git")).encode()

    result = drafts.import_definition(
        slug="from-git", body=body, yaml_format=True, by="cli", publish=True
    )

    assert result.created is True
    assert result.version.number == 1
    assert result.workflow.name == "From git"
    assert result.workflow.published_version == result.version
    assert AuditEntry.objects.filter(action="workflow.import", target_id="from-git").exists()


def placed() -> dict:
    """A definition whose every node has a place on the canvas."""
    raw = branching()
    raw["triggers"] = [
        {"event": "com.example.order.placed", "position": {"x": -240, "y": 40}},
        {"manual": True, "position": {"x": -240.5, "y": 170}},
    ]
    for index, step in enumerate(raw["steps"]):
        step["position"] = {"x": 80 + 320 * index, "y": 40}
    return raw


@pytest.mark.parametrize("yaml_format", [False, True], ids=["json", "yaml"])
def test_trigger_positions_survive_import_publish_and_export(yaml_format):
    raw = placed()
    body = (yaml.safe_dump(raw) if yaml_format else json.dumps(raw)).encode()

    result = drafts.import_definition(
        slug="placed", body=body, yaml_format=yaml_format, by="cli", publish=True
    )

    assert result.workflow.draft == raw
    assert result.version.definition == raw
    for version in (None, 1):
        _name, text = drafts.export_definition(
            workflow=result.workflow, yaml_format=yaml_format, version=version
        )
        exported = yaml.safe_load(text) if yaml_format else json.loads(text)
        assert exported["triggers"] == raw["triggers"]
        assert exported == raw


def test_an_invalid_import_names_every_problem_and_changes_nothing():
    put_workflow(slug="kept", raw=definition(log_step("a")))
    bad = json.dumps(
        {
            "name": "x",
            "steps": [
                {"id": "a", "kind": "log"},
                {"id": "B", "kind": "log", "config": {"message": "m"}},
            ],
        }
    ).encode()

    with pytest.raises(InvalidDefinition) as refused:
        drafts.import_definition(slug="kept", body=bad, yaml_format=False, by="cli")

    assert [p.path for p in refused.value.problems] == ["/steps/1/id"]
    assert Workflow.objects.get(slug="kept").draft == definition(log_step("a"))


def test_an_unreadable_import_says_why_and_changes_nothing():
    with pytest.raises(UnreadableDefinition, match="invalid YAML"):
        drafts.import_definition(slug="nope", body=b"steps: [\n", yaml_format=True, by="cli")
    with pytest.raises(drafts.DraftRefused, match="slug"):
        drafts.import_definition(slug="a b", body=b"{}", yaml_format=False, by="cli")

    assert not Workflow.objects.exists()


def test_an_import_whose_publish_is_refused_takes_the_new_draft_back():
    put_workflow(slug="hooked", raw=definition(log_step("a")))
    raw = definition(log_step("b"))
    raw["triggers"] = [{"webhook": "missing"}]

    with pytest.raises(InvalidDefinition, match="no webhook 'missing'"):
        drafts.import_definition(
            slug="hooked", body=json.dumps(raw).encode(), yaml_format=False, by="cli", publish=True
        )

    assert Workflow.objects.get(slug="hooked").draft == definition(log_step("a"))


# --- permissions ---------------------------------------------------------------------------
def test_a_team_workflow_is_seen_by_its_members_and_admins_only():
    team = Group.objects.create(name="payments")
    workflow = drafts.create_workflow(slug="team-only", name="", by="eddie", team=team)
    member = user("mia", "editor", "payments")
    outsider = user("olga", "editor")
    admin = user("adam", "admin")
    viewer_member = user("val", "viewer", "payments")

    assert drafts.may_edit(member, workflow)
    assert not drafts.may_view(outsider, workflow)
    assert drafts.may_edit(admin, workflow)
    assert drafts.may_view(viewer_member, workflow)
    assert not drafts.may_edit(viewer_member, workflow)


def test_without_a_team_every_viewer_sees_and_every_editor_edits():
    workflow = drafts.create_workflow(slug="open", name="", by="eddie")

    assert drafts.may_view(user("vera", "viewer"), workflow)
    assert not drafts.may_edit(user("vic", "viewer"), workflow)
    assert drafts.may_edit(user("ed", "editor"), workflow)
    assert not drafts.may_view(user("nobody"), workflow)


def test_a_url_step_without_a_url_is_still_a_draft_worth_keeping():
    workflow = drafts.create_workflow(slug="half", name="", by="eddie")
    raw = definition(http_step("call", ""))

    problems = drafts.save_draft(workflow=workflow, raw=raw, by="eddie")

    assert [p.path for p in problems] == ["/steps/0/config/url"]
    assert Workflow.objects.get(slug="half").draft == raw


def test_a_problem_in_the_shape_does_not_hide_each_steps_own_problems():
    raw = {
        "name": "x",
        "triggers": [{"event": ""}],  # caught by the first round (the shape)
        "steps": [
            {"id": "call", "kind": "http_request", "config": {}},
            {"id": "ok", "kind": "log", "config": {"message": "fine"}},
        ],
    }

    problems = drafts.check_draft(raw)

    assert [p.path for p in problems] == ["/triggers/0/event", "/steps/0/config"]
    with pytest.raises(InvalidDefinition) as publish_sees:
        parse_definition(raw)
    assert [p.path for p in publish_sees.value.problems] == ["/triggers/0/event"]
