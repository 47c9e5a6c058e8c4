"""The dead-letter queue: list, inspect, edit (recorded), re-drive one or many, discard with a
reason; nothing leaves the queue without a recorded decision. Service, API and CLI."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import cloudevent, definition, log_step
from tests.runs_here import drive, publish, steps_of, token_client, trigger
from workflows.access.models import AuditEntry
from workflows.events.models import DeadLetter, Event
from workflows.events.schemas import register_schema
from workflows.recovery import dead_letters as dlq
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order"],
    "properties": {"order": {"type": "integer"}},
}


@pytest.fixture
def step_letter() -> DeadLetter:
    """A step dead letter: `greet` reads the event's name, and the event had none."""
    publish(
        "greeter",
        definition(
            log_step("start"),
            log_step("greet", after=("start",), message="hello {{ event.data.name }}"),
        ),
    )
    run = drive(trigger("greeter", {"nobody": True}))
    assert run.status == "failed"
    return DeadLetter.objects.get(run=run)


@pytest.fixture
def event_letter() -> DeadLetter:
    """A schedule tick whose data broke its type's schema, kept as an event dead letter."""
    register_schema(event_type="com.example.tick", schema=ORDER_SCHEMA, created_by="tests")
    return DeadLetter.objects.create(
        kind="event",
        reason="schedule nightly: data does not match its schema",
        payload={
            "channel": "schedule",
            "schedule": "nightly",
            "cloudevent": cloudevent("com.example.tick", data={"order": "seven"}),
        },
    )


def test_editing_a_payload_keeps_the_original_and_is_audited(event_letter):
    first = event_letter.payload
    changed = {**first, "cloudevent": {**first["cloudevent"], "data": {"order": 7}}}

    dlq.edit_payload(letter_id=event_letter.pk, payload=changed, actor="alice", reason="typo")
    dlq.edit_payload(letter_id=event_letter.pk, payload={**changed, "note": 1}, actor="bob")

    event_letter.refresh_from_db()
    assert event_letter.original_payload == first  # the first version, not the previous one
    assert event_letter.payload["note"] == 1 and event_letter.resolved_at is None
    edits = AuditEntry.objects.filter(action="dead_letter.edit").order_by("id")
    assert [(e.actor, e.reason) for e in edits] == [("alice", "typo"), ("bob", "")]
    assert edits[0].details == {"before": first, "after": changed}


def test_re_driving_an_edited_event_ingests_it_and_closes_the_letter(event_letter):
    with pytest.raises(dlq.DeadLetterError, match="still breaks its schema"):
        dlq.redrive(letter_id=event_letter.pk, actor="alice")
    event_letter.refresh_from_db()
    assert event_letter.resolved_at is None  # a failed re-drive leaves it in the queue
    fixed = {
        **event_letter.payload,
        "cloudevent": {**event_letter.payload["cloudevent"], "data": {"order": 7}},
    }
    dlq.edit_payload(letter_id=event_letter.pk, payload=fixed, actor="alice")

    done = dlq.redrive(letter_id=event_letter.pk, actor="alice", reason="fixed the data")

    event = Event.objects.get(pk=done.event)
    assert (event.type, event.data, event.channel) == ("com.example.tick", {"order": 7}, "schedule")
    event_letter.refresh_from_db()
    assert event_letter.resolved_by == "alice"
    assert event_letter.resolution == f"re-driven: ingested as event {event.pk}"
    entry = AuditEntry.objects.get(action="dead_letter.redrive")
    assert (entry.target_id, entry.reason, entry.details["edited"]) == (
        str(event_letter.pk),
        "fixed the data",
        True,
    )


def test_re_driving_a_step_letter_replays_the_run_from_the_failed_step(step_letter):
    dlq.edit_payload(
        letter_id=step_letter.pk,
        payload={**step_letter.payload, "input": {"name": "Ada"}},
        actor="alice",
    )

    done = dlq.redrive(letter_id=step_letter.pk, actor="alice")

    replay = drive(Run.objects.get(pk=done.runs[0]))
    assert replay.replay_of_id == step_letter.run_id and replay.status == "succeeded"
    assert replay.input_override == {"name": "Ada"}
    assert steps_of(replay)["greet"].output == {"message": "hello Ada"}
    assert steps_of(replay)["start"].reused_from_id is not None
    step_letter.refresh_from_db()
    assert step_letter.resolution == f"re-driven: replayed as run {replay.pk}"
    assert AuditEntry.objects.filter(action="run.replay").count() == 1


def test_a_bus_letter_is_matched_again(db):
    publish("late", definition(log_step("only")))
    event = Event.objects.create(
        source="/tests", ce_id="poison-1", type="com.example.order.placed", data={"order": 1}
    )
    letter = DeadLetter.objects.create(
        kind="bus",
        reason="delivered 6 times without success",
        event=event,
        payload={"event_id": event.pk},
    )

    done = dlq.redrive(letter_id=letter.pk, actor="alice")

    assert [r.workflow.slug for r in Run.objects.filter(pk__in=done.runs)] == ["late"]
    letter.refresh_from_db()
    assert letter.resolution == f"re-driven: event {event.pk} matched again (1 new run(s))"


def test_an_event_cut_by_the_depth_guard_is_delivered_to_its_workflows(db):
    publish("deep", definition(log_step("only")))
    event = Event.objects.create(source="/tests", ce_id="deep-1", type="com.example.order.placed")
    letter = DeadLetter.objects.create(
        kind="event",
        reason="causation chain too deep",
        event=event,
        payload={"guard": "causation-depth", "workflows": ["deep"]},
    )

    done = dlq.redrive(letter_id=letter.pk, actor="alice")

    run = Run.objects.get(pk=done.runs[0])
    assert (run.origin, run.event_id, run.workflow.slug) == ("redrive", event.pk, "deep")


def test_discarding_needs_a_reason_and_records_the_decision(event_letter):
    with pytest.raises(dlq.DeadLetterError, match="reason is required"):
        dlq.discard(letter_id=event_letter.pk, actor="alice", reason="  ")

    dlq.discard(letter_id=event_letter.pk, actor="alice", reason="test data")

    event_letter.refresh_from_db()
    assert (event_letter.resolved_by, event_letter.resolution) == ("alice", "discarded: test data")
    assert event_letter.resolved_at is not None
    assert AuditEntry.objects.get(action="dead_letter.discard").reason == "test data"


def test_a_resolved_letter_cannot_be_resolved_again_or_edited(event_letter):
    dlq.discard(letter_id=event_letter.pk, actor="alice", reason="noise")

    for act in (
        lambda: dlq.discard(letter_id=event_letter.pk, actor="bob", reason="again"),
        lambda: dlq.redrive(letter_id=event_letter.pk, actor="bob"),
        lambda: dlq.edit_payload(letter_id=event_letter.pk, payload={}, actor="bob"),
    ):
        with pytest.raises(dlq.DeadLetterError, match="already resolved by alice"):
            act()
    event_letter.refresh_from_db()
    assert event_letter.resolved_by == "alice"
    assert AuditEntry.objects.filter(actor="bob").count() == 0


def test_re_driving_many_reports_each_letter_and_keeps_going(event_letter, step_letter):
    results = dlq.redrive_many(letter_ids=[event_letter.pk, step_letter.pk], actor="alice")

    assert [(r["id"], r["ok"]) for r in results] == [
        (event_letter.pk, False),
        (step_letter.pk, True),
    ]
    assert "still breaks its schema" in results[0]["error"]
    assert DeadLetter.objects.filter(resolved_at__isnull=True).count() == 1


# --- API ---------------------------------------------------------------------------------------


def test_the_api_lists_open_letters_with_reason_and_payload(client, event_letter, step_letter):
    api = token_client(client, "viewer")

    body = api.get("/api/v1/dead-letters").json()

    assert [x["id"] for x in body["dead_letters"]] == [step_letter.pk, event_letter.pk]
    assert body["open"] == 2
    step = body["dead_letters"][0]
    assert (step["kind"], step["workflow"], step["step"]) == ("step", "greeter", "greet")
    assert step["payload"]["step"] == "greet" and "name" in step["reason"]
    assert (
        api.get("/api/v1/dead-letters", {"kind": "event"}).json()["dead_letters"][0]["id"]
        == event_letter.pk
    )
    assert api.get("/api/v1/dead-letters", {"state": "resolved"}).json()["dead_letters"] == []
    assert api.get("/api/v1/dead-letters", {"state": "odd"}).status_code == 400


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_acting_on_dead_letters_over_the_api_needs_the_operator_role(client, event_letter, role):
    api = token_client(client, role)
    base = f"/api/v1/dead-letters/{event_letter.pk}"

    answers = [
        api.patch(base, {"payload": {}}, content_type="application/json"),
        api.post(f"{base}/redrive", {}, content_type="application/json"),
        api.post(f"{base}/discard", {"reason": "x"}, content_type="application/json"),
        api.post(
            "/api/v1/dead-letters/redrive",
            {"ids": [event_letter.pk]},
            content_type="application/json",
        ),
    ]

    assert [a.status_code for a in answers] == [403, 403, 403, 403]
    event_letter.refresh_from_db()
    assert event_letter.resolved_at is None and event_letter.original_payload is None


def test_an_operator_edits_redrives_and_discards_over_the_api(client, event_letter, step_letter):
    api = token_client(client, "operator")
    base = f"/api/v1/dead-letters/{event_letter.pk}"
    fixed = {
        **event_letter.payload,
        "cloudevent": {**event_letter.payload["cloudevent"], "data": {"order": 7}},
    }

    patched = api.patch(base, {"payload": fixed, "reason": "typo"}, content_type="application/json")
    redriven = api.post(f"{base}/redrive", {"reason": "fixed"}, content_type="application/json")
    no_reason = api.post(
        f"/api/v1/dead-letters/{step_letter.pk}/discard", {}, content_type="application/json"
    )
    discarded = api.post(
        f"/api/v1/dead-letters/{step_letter.pk}/discard",
        {"reason": "dupe"},
        content_type="application/json",
    )
    again = api.post(f"{base}/redrive", {}, content_type="application/json")

    assert patched.status_code == 200 and patched.json()["edited"] is True
    assert patched.json()["original_payload"]["cloudevent"]["data"] == {"order": "seven"}
    assert redriven.status_code == 200, redriven.content
    assert redriven.json()["resolution"].startswith("re-driven: ingested as event")
    assert no_reason.status_code == 400
    assert discarded.status_code == 200 and discarded.json()["resolution"] == "discarded: dupe"
    assert again.status_code == 409 and "already resolved" in again.json()["detail"]
    assert api.get("/api/v1/dead-letters/999999").status_code == 404


def test_bulk_redrive_over_the_api_answers_207_when_some_fail(client, event_letter, step_letter):
    api = token_client(client, "operator")

    response = api.post(
        "/api/v1/dead-letters/redrive",
        {"ids": [event_letter.pk, step_letter.pk]},
        content_type="application/json",
    )

    assert response.status_code == 207
    assert [r["ok"] for r in response.json()["results"]] == [False, True]
    bad = api.post("/api/v1/dead-letters/redrive", {"ids": "all"}, content_type="application/json")
    assert bad.status_code == 400


# --- CLI ---------------------------------------------------------------------------------------


def dlq_command(*args: str) -> str:
    out = io.StringIO()
    call_command("dlq", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_dlq_command_lists_shows_redrives_and_discards(event_letter, step_letter):
    listed = dlq_command("list")
    assert f"{step_letter.pk}\tstep\trun {step_letter.run_id} step greet\topen" in listed
    assert f"{event_letter.pk}\tevent" in listed
    assert '"reason": "schedule nightly' in dlq_command("show", str(event_letter.pk))

    assert "replayed as run" in dlq_command("redrive", str(step_letter.pk), "--reason", "go")
    assert "discarded" in dlq_command("discard", str(event_letter.pk), "--reason", "noise")

    assert dlq_command("list") == "no open dead letters\n"
    assert "resolved: discarded: noise" in dlq_command("list", "--all")
    assert AuditEntry.objects.get(action="dead_letter.discard").actor == "cli"


def test_the_dlq_command_reports_failures_with_a_non_zero_exit(event_letter):
    with pytest.raises(CommandError, match="no dead letter 999999"):
        dlq_command("show", "999999")
    with pytest.raises(CommandError, match="1 of 1 dead letter"):
        dlq_command("redrive", str(event_letter.pk))
    with pytest.raises(CommandError, match="--payload is not JSON"):
        dlq_command("edit", str(event_letter.pk), "--payload", "[nope")
    dlq_command("edit", str(event_letter.pk), "--payload", '{"replaced": true}')
    event_letter.refresh_from_db()
    assert event_letter.payload == {"replaced": True}


# --- the dashboard -----------------------------------------------------------------------------


def test_the_dead_letter_page_lists_open_letters_with_reason_and_payload(
    client, event_letter, step_letter
):
    from tests.runs_here import signed_in

    page = signed_in(client, "viewer").get("/dead-letters/").content.decode()

    assert 'id="open-count">2 open' in page
    assert f'id="dead-letter-{step_letter.pk}" data-kind="step"' in page
    assert f'id="dead-letter-{event_letter.pk}" data-kind="event"' in page
    assert "schedule nightly: data does not match its schema" in page
    assert "&quot;order&quot;: &quot;seven&quot;" in page  # the payload, as JSON
    assert 'name="ids"' not in page  # a viewer gets no re-drive checkboxes


def test_an_operator_edits_then_redrives_a_letter_from_its_page(client, event_letter):
    from tests.runs_here import signed_in

    operator = signed_in(client, "operator")
    base = f"/dead-letters/{event_letter.pk}/"
    fixed = {
        **event_letter.payload,
        "cloudevent": {**event_letter.payload["cloudevent"], "data": {"order": 7}},
    }

    not_json = operator.post(base + "edit/", {"payload": "{oops"})
    edited = operator.post(base + "edit/", {"payload": json.dumps(fixed), "reason": "typo"})
    redriven = operator.post(base + "redrive/", {"reason": "fixed"})
    page = operator.get(base).content.decode()

    assert not_json.status_code == 400 and b"The payload is not JSON" in not_json.content
    assert edited.status_code == 302 and redriven.status_code == 302
    assert 'data-resolved="true"' in page and "re-driven: ingested as event" in page
    assert 'id="dead-letter-original"' in page  # the first payload stays visible
    assert [e.actor for e in AuditEntry.objects.order_by("id")] == ["operator-user"] * 2


def test_discarding_from_the_page_needs_a_reason(client, event_letter):
    from tests.runs_here import signed_in

    operator = signed_in(client, "operator")

    refused = operator.post(f"/dead-letters/{event_letter.pk}/discard/", {"reason": ""})
    done = operator.post(f"/dead-letters/{event_letter.pk}/discard/", {"reason": "test data"})

    assert refused.status_code == 400 and b"reason is required" in refused.content
    assert done.status_code == 302
    event_letter.refresh_from_db()
    assert event_letter.resolution == "discarded: test data"


def test_redriving_selected_letters_from_the_list(client, event_letter, step_letter):
    from tests.runs_here import signed_in

    operator = signed_in(client, "operator")

    response = operator.post(
        "/dead-letters/", {"ids": [str(step_letter.pk)], "reason": "go", "confirm": "yes"}
    )

    assert b"replayed as run" in response.content
    step_letter.refresh_from_db()
    event_letter.refresh_from_db()
    assert step_letter.resolved_at is not None and event_letter.resolved_at is None


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_acting_on_dead_letters_in_the_dashboard_needs_the_operator_role(
    client, event_letter, role
):
    from tests.runs_here import signed_in

    page = signed_in(client, role)
    base = f"/dead-letters/{event_letter.pk}/"

    answers = [
        page.post(base + "edit/", {"payload": "{}"}),
        page.post(base + "redrive/"),
        page.post(base + "discard/", {"reason": "x"}),
        page.post("/dead-letters/", {"ids": [str(event_letter.pk)]}),
    ]

    assert [a.status_code for a in answers] == [403] * 4
    assert page.get(base).status_code == 200  # reading is fine
    event_letter.refresh_from_db()
    assert event_letter.resolved_at is None and event_letter.original_payload is None
