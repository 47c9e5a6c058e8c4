"""Re-drive stored events into a chosen workflow: pick by type, source and time range, pin a
version or take the latest, dry-run first. Service, API and CLI."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tests.factories import cloudevent, definition, log_step
from tests.runs_here import drive, publish, token_client
from workflows.access.models import AuditEntry
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.recovery.redrive import EventSelection, RedriveError, redrive_events
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

SIGNUP = "com.example.user.signed_up"


def stored(type_: str = SIGNUP, *, source: str = "/tests", age_days: int = 0, **data) -> Event:
    event, created = ingest_event(
        envelope=from_structured(cloudevent(type_, source=source, data=data or {"user": 1}))
    )
    assert created
    if age_days:
        Event.objects.filter(pk=event.pk).update(
            received_at=timezone.now() - timedelta(days=age_days)
        )
        event.refresh_from_db()
    return event


@pytest.fixture
def history() -> dict[str, Event]:
    """Events stored before the `welcome` workflow existed."""
    return {
        "old": stored(age_days=10, user=1),
        "web": stored(age_days=2, source="/web", user=2),
        "app": stored(age_days=1, source="/app", user=3),
        "other_type": stored("com.example.user.left", age_days=1, user=4),
    }


@pytest.fixture
def welcome():
    first = publish(
        "welcome", definition(log_step("greet", message="hi {{ event.data.user }}"), event=SIGNUP)
    )
    second = publish("welcome", definition(log_step("greet", message="hello"), event=SIGNUP))
    return first, second


def test_a_dry_run_lists_the_runs_that_would_start_and_starts_none(history, welcome):
    plan = redrive_events(
        workflow_slug="welcome", selection=EventSelection(type=SIGNUP), dry_run=True
    )

    assert [d.event.pk for d in plan.starting] == [history[k].pk for k in ("old", "web", "app")]
    assert plan.version.number == 2
    assert plan.as_json()["would_start"] == 3
    assert not Run.objects.exists() and not AuditEntry.objects.exists()


def test_re_driving_starts_pinned_runs_oldest_first_and_audits_them(history, welcome):
    after = timezone.now() - timedelta(days=3)
    plan = redrive_events(
        workflow_slug="welcome",
        version=1,
        actor="alice",
        reason="backfill",
        selection=EventSelection(type=SIGNUP, after=after),
    )

    runs = list(Run.objects.order_by("id"))
    assert [r.event_id for r in runs] == [history["web"].pk, history["app"].pk]
    assert all((r.origin, r.version.number) == ("redrive", 1) for r in runs)
    assert [drive(r).status for r in runs] == ["succeeded", "succeeded"]
    assert plan.as_json()["runs"] == [r.pk for r in runs]
    entry = AuditEntry.objects.get(action="events.redrive")
    assert (entry.actor, entry.target_id, entry.reason) == ("alice", "welcome", "backfill")
    assert entry.details["runs"] == [r.pk for r in runs] and entry.details["version"] == 1


def test_source_and_time_range_narrow_the_selection(history, welcome):
    def picked(**selection) -> list[int]:
        plan = redrive_events(
            workflow_slug="welcome",
            dry_run=True,
            selection=EventSelection(type=SIGNUP, **selection),
        )
        return [d.event.pk for d in plan.deliveries]

    now = timezone.now()
    assert picked(source="/web") == [history["web"].pk]
    assert picked(before=now - timedelta(days=5)) == [history["old"].pk]
    assert picked(after=now - timedelta(days=5), before=now - timedelta(hours=36)) == [
        history["web"].pk
    ]
    assert picked(limit=1) == [history["old"].pk]


def test_an_event_the_workflows_trigger_filter_rejects_is_listed_as_not_starting(history):
    body = definition(log_step("greet"), event=SIGNUP)
    body["triggers"][0]["filter"] = "event.source == '/app'"
    publish("app-only", body)

    plan = redrive_events(
        workflow_slug="app-only", selection=EventSelection(type=SIGNUP), actor="alice"
    )

    assert [(d.event.pk, d.starts) for d in plan.deliveries] == [
        (history["old"].pk, False),
        (history["web"].pk, False),
        (history["app"].pk, True),
    ]
    assert "trigger filter" in plan.deliveries[0].why
    assert list(Run.objects.values_list("event_id", flat=True)) == [history["app"].pk]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workflow_slug": "nope"}, "no workflow nope"),
        ({"version": 9}, "has no version 9"),
        ({"version": "newest"}, "version must be"),
        ({"selection": EventSelection(type="")}, "by type"),
        ({"selection": EventSelection(type=SIGNUP, limit=0)}, "limit must be"),
    ],
)
def test_a_re_drive_that_cannot_be_done_says_why(welcome, kwargs, message):
    arguments = {
        "workflow_slug": "welcome",
        "selection": EventSelection(type=SIGNUP),
        "actor": "alice",
        **kwargs,
    }

    with pytest.raises(RedriveError, match=message):
        redrive_events(**arguments)


# --- API ---------------------------------------------------------------------------------------


def test_the_redrive_endpoint_dry_runs_and_starts_runs(client, history, welcome):
    api = token_client(client, "operator")
    body = {"type": SIGNUP, "source": "/app", "workflow": "welcome", "version": 1}

    dry = api.post("/api/v1/redrive", {**body, "dry_run": True}, content_type="application/json")
    done = api.post(
        "/api/v1/redrive", {**body, "reason": "backfill"}, content_type="application/json"
    )

    assert dry.status_code == 200 and dry.json()["would_start"] == 1
    assert dry.json()["deliveries"][0]["event"] == history["app"].pk
    assert done.status_code == 201, done.content
    assert done.json()["started"] == 1
    assert Run.objects.get(pk=done.json()["runs"][0]).origin == "redrive"


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_re_driving_over_the_api_needs_the_operator_role(client, history, welcome, role):
    api = token_client(client, role)

    response = api.post(
        "/api/v1/redrive", {"type": SIGNUP, "workflow": "welcome"}, content_type="application/json"
    )

    assert response.status_code == 403
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"type": SIGNUP}, 400),
        ({"type": SIGNUP, "workflow": "welcome", "after": "yesterday"}, 400),
        ({"type": SIGNUP, "workflow": "welcome", "limit": "many"}, 400),
        ({"type": SIGNUP, "workflow": "missing"}, 404),
    ],
)
def test_the_redrive_endpoint_answers_problems(client, welcome, body, status):
    api = token_client(client, "operator")

    response = api.post("/api/v1/redrive", body, content_type="application/json")

    assert response.status_code == status
    assert response["Content-Type"].startswith("application/problem+json")


# --- CLI ---------------------------------------------------------------------------------------


def redrive_command(*args: str) -> str:
    out = io.StringIO()
    call_command("redrive", *args, stdout=out)
    return out.getvalue()


def test_the_redrive_command_dry_runs_then_delivers(history, welcome):
    dry = redrive_command("--type", SIGNUP, "--workflow", "welcome", "--dry-run")
    assert "3 run(s) of welcome v2 would start from 3 event(s)" in dry
    assert not Run.objects.exists()

    done = redrive_command(
        "--type",
        SIGNUP,
        "--workflow",
        "welcome",
        "--pin",
        "1",
        "--source",
        "/web",
        "--reason",
        "backfill",
    )

    run = Run.objects.get()
    assert f"event {history['web'].pk} ({history['web'].ce_id}): started run {run.pk}" in done
    assert AuditEntry.objects.get(action="events.redrive").actor == "cli"


def test_the_redrive_command_reports_errors_with_a_non_zero_exit(welcome):
    with pytest.raises(CommandError, match="no workflow ghost"):
        redrive_command("--type", SIGNUP, "--workflow", "ghost")
    with pytest.raises(CommandError, match="--after must be an ISO 8601 time"):
        redrive_command("--type", SIGNUP, "--workflow", "welcome", "--after", "soon")


# --- the dashboard -----------------------------------------------------------------------------


def test_the_redrive_page_dry_runs_and_an_operator_delivers(client, history, welcome):
    from tests.runs_here import signed_in

    operator = signed_in(client, "operator")
    form = {"type": SIGNUP, "source": "/web", "workflow": "welcome", "version": "1"}

    dry = operator.get("/redrive/", form).content.decode()
    assert "1 run(s) of <code>welcome</code> v1 would start" in dry
    assert not Run.objects.exists()

    done = operator.post("/redrive/", {**form, "reason": "backfill"}).content.decode()

    run = Run.objects.get()
    assert "1 run(s) of <code>welcome</code> v1 started" in done
    assert f'href="/runs/{run.pk}/"' in done
    assert (run.origin, run.event_id) == ("redrive", history["web"].pk)


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_delivering_from_the_redrive_page_needs_the_operator_role(client, history, welcome, role):
    from tests.runs_here import signed_in

    page = signed_in(client, role)

    dry = page.get("/redrive/", {"type": SIGNUP, "workflow": "welcome"})
    refused = page.post("/redrive/", {"type": SIGNUP, "workflow": "welcome"})

    assert dry.status_code == 200 and b"would start" in dry.content
    assert refused.status_code == 403
    assert not Run.objects.exists()
