"""An API token can belong to a team: it then sees its team's workflows and those of no team,
as a member of that team does in the dashboard, and another team's workflow (its runs, run
events, dead letters, batches and audit entries) is as if it did not exist. A token of no
team sees everything, as tokens always have.

The world: `payroll` (team finance), `campaign` (team growth) and `shop` (no team), one
failed run each, driven in this process. The team token is growth's, with the admin role, so
every role check passes and only the team decides. Calls go through the Django test client.
"""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import base, call_command
from django.core.management.base import CommandError

from tests.factories import cloudevent, definition, log_step
from tests.runs_here import drive, publish, trigger
from workflows.access import audit
from workflows.access.models import ApiToken, AuditEntry
from workflows.access.roles import ensure_groups
from workflows.access.tokens import authenticate_token, create_api_token
from workflows.catalog.models import Workflow
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.management.commands.create_api_token import Command as CreateApiToken
from workflows.queries.dashboard import hidden_for_team, hidden_workflow_ids
from workflows.recovery import replay as replays
from workflows.recovery.models import ReplayBatch
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

PAYROLL = "com.example.payroll.due"  # only finance's payroll takes it
CAMPAIGN = "com.example.campaign.sent"  # only growth's campaign takes it
ORDERS = "com.example.order.placed"  # only the shop (everyone's) takes it
FAIL = {"id": "boom", "kind": "fail", "config": {"message": "broken"}}


class Caller:
    """The Django test client with one token's Authorization header."""

    def __init__(self, client, plaintext: str):
        self.client, self.header = client, f"Bearer {plaintext}"

    def __call__(self, method: str, path: str, body=None, **query):
        data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body)
        if query:
            path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        return self.client.generic(
            method.upper(),
            path,
            data=data,
            content_type="application/json",
            HTTP_AUTHORIZATION=self.header,
        )


@pytest.fixture
def world(db, monkeypatch):
    monkeypatch.setattr("workflows.recovery.replay_batches._enqueue_batch", lambda batch_id: None)
    finance, growth = Group.objects.create(name="finance"), Group.objects.create(name="growth")
    runs = {}
    for slug, event_type, team in (
        ("payroll", PAYROLL, finance),
        ("campaign", CAMPAIGN, growth),
        ("shop", ORDERS, None),
    ):
        publish(slug, definition(FAIL, event=event_type))
        Workflow.objects.filter(slug=slug).update(team=team)
        runs[slug] = drive(trigger(slug, {"n": 1}, type=event_type))
        assert runs[slug].status == "failed"
    return {
        "finance": finance,
        "growth": growth,
        "runs": runs,
        "letters": {
            slug: DeadLetter.objects.get(kind="step", run=run) for slug, run in runs.items()
        },
    }


@pytest.fixture
def growth(client, world) -> Caller:
    _token, plaintext = create_api_token(name="growth-ci", role="admin", team=world["growth"])
    return Caller(client, plaintext)


@pytest.fixture
def everyone(client, world) -> Caller:
    _token, plaintext = create_api_token(name="ops", role="admin")
    return Caller(client, plaintext)


UNKNOWN = 10**9


def not_found(response) -> dict:
    assert response.status_code == 404, response.content[:500]
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


def same_as_unknown(hidden, unknown, pk: int) -> bool:
    """Whether the answer about `pk` is the answer about the id UNKNOWN, but for the id."""
    expected = json.loads(json.dumps(not_found(unknown)).replace(str(UNKNOWN), str(pk)))
    return not_found(hidden) == expected


# --- the token, the CLI and the rule -------------------------------------------------------------


def test_the_cli_creates_a_token_of_a_team_that_authenticates(world):
    out, err = io.StringIO(), io.StringIO()

    call_command(
        "create_api_token",
        "growth-bot",
        "--role",
        "viewer",
        "--team",
        "growth",
        stdout=out,
        stderr=err,
    )

    token = authenticate_token(out.getvalue().strip())
    assert token is not None and token.name == "growth-bot"
    assert (token.role, token.team) == ("viewer", world["growth"])
    assert "team growth" in err.getvalue()


def test_the_cli_refuses_an_unknown_team_or_a_role_and_creates_nothing(world):
    ensure_groups()
    for team in ("marketing", "operator"):
        with pytest.raises(CommandError, match=f"no team named '{team}'.*finance, growth"):
            call_command("create_api_token", "bot", "--team", team, stdout=io.StringIO())
    assert not ApiToken.objects.filter(name="bot").exists()


def test_the_cli_exits_non_zero_on_an_unknown_team(world, capsys, monkeypatch):
    # run_from_argv closes every connection when done, which would end this test's
    # transaction: keep it open.
    monkeypatch.setattr(base.connections, "close_all", lambda: None)
    with pytest.raises(SystemExit) as exited:
        CreateApiToken().run_from_argv(["manage.py", "create_api_token", "bot", "--team", "nope"])

    assert exited.value.code != 0
    assert "no team named 'nope'" in capsys.readouterr().err
    assert not ApiToken.objects.exists()


def test_a_token_without_a_team_is_created_as_before(world):
    out = io.StringIO()
    call_command("create_api_token", "plain", "--role", "operator", stdout=out)

    token = authenticate_token(out.getvalue().strip())
    assert token is not None and token.team is None and token.role == "operator"


def test_a_team_token_hides_what_a_member_of_its_team_does_not_see(world):
    ensure_groups()
    member = get_user_model().objects.create_user("gina", password="not-used")
    member.groups.add(Group.objects.get(name="viewer"), world["growth"])
    payroll = Workflow.objects.get(slug="payroll")

    assert hidden_for_team(world["growth"].pk) == hidden_workflow_ids(member) == {payroll.pk}
    assert hidden_for_team(None) == frozenset()


def test_deleting_a_team_deletes_its_tokens(world):
    token, _ = create_api_token(name="growth-ci", role="viewer", team=world["growth"])
    world["growth"].delete()
    assert not ApiToken.objects.filter(pk=token.pk).exists()


# --- workflows and the editor --------------------------------------------------------------------


def test_another_teams_workflow_is_404_for_reading_and_every_change(growth, world):
    before = Workflow.objects.get(slug="payroll")
    body = definition(log_step("mine"), event=PAYROLL)
    calls = [
        ("get", "/api/v1/workflows/payroll", None),
        ("put", "/api/v1/workflows/payroll", body),
        ("post", "/api/v1/workflows/payroll/publish", None),
        ("post", "/api/v1/workflows/payroll/runs", {"data": {}}),
        ("get", "/api/v1/workflows/payroll/export", None),
        ("get", "/api/v1/workflows/payroll/versions", None),
        ("get", "/api/v1/workflows/payroll/diff?from=1&to=draft", None),
        ("put", "/api/v1/workflows/payroll/draft", body),
        ("post", "/api/v1/workflows/payroll/import", body),
        ("post", "/api/v1/workflows/payroll/versions/1/restore", None),
        ("post", "/api/v1/workflows/payroll/try", {"data": {}, "type": PAYROLL}),
        ("post", "/api/v1/workflows/payroll/shadow", {"last": 1}),
    ]

    for method, path, data in calls:
        not_found(growth(method, path, data))

    after = Workflow.objects.get(slug="payroll")
    assert (after.draft, after.draft_revision, after.team_id) == (
        before.draft,
        before.draft_revision,
        world["finance"].pk,
    )
    assert after.versions.count() == 1
    assert not Run.objects.filter(workflow=after).exclude(pk=world["runs"]["payroll"].pk)
    assert not ReplayBatch.objects.exists()


def test_a_team_token_reads_and_changes_its_teams_and_everyones_workflows(growth, everyone):
    for slug in ("campaign", "shop"):
        assert growth("get", f"/api/v1/workflows/{slug}").status_code == 200
        assert growth("get", f"/api/v1/workflows/{slug}/versions").status_code == 200
        changed = growth("put", f"/api/v1/workflows/{slug}", definition(log_step("x")))
        assert changed.status_code == 200, changed.content
        # Passed the team check: refused only because it has no manual trigger.
        assert growth("post", f"/api/v1/workflows/{slug}/runs").status_code == 409
    assert everyone("get", "/api/v1/workflows/payroll").status_code == 200


def test_the_shadow_of_another_teams_workflow_answers_as_an_unknown_one(growth, everyone):
    hidden = not_found(growth("post", "/api/v1/workflows/payroll/shadow", {"last": 1}))
    unknown = not_found(growth("post", "/api/v1/workflows/nobody/shadow", {"last": 1}))

    assert hidden["detail"] == "no workflow payroll" and unknown["detail"] == "no workflow nobody"
    assert {k: v for k, v in hidden.items() if k != "detail"} == {
        k: v for k, v in unknown.items() if k != "detail"
    }
    assert everyone("post", "/api/v1/workflows/payroll/shadow", {"last": 1}).status_code == 202


def test_a_workflow_a_team_token_creates_belongs_to_its_team(growth, everyone, world):
    body = definition(log_step("a"))

    assert growth("put", "/api/v1/workflows/growth-new", body).status_code == 201
    assert growth("put", "/api/v1/workflows/growth-draft/draft", body).status_code == 201
    assert growth("post", "/api/v1/workflows/growth-import/import", body).status_code == 201
    assert everyone("put", "/api/v1/workflows/open-new", body).status_code == 201

    teams = dict(Workflow.objects.values_list("slug", "team__name"))
    assert teams["growth-new"] == teams["growth-draft"] == teams["growth-import"] == "growth"
    assert teams["open-new"] is None


# --- runs ----------------------------------------------------------------------------------------


def listed(caller: Caller, **query) -> set[int]:
    response = caller("get", "/api/v1/runs", **query)
    assert response.status_code == 200, response.content
    return {run["id"] for run in response.json()["runs"]}


def test_the_run_list_leaves_out_another_teams_runs(growth, everyone, world):
    runs = world["runs"]

    assert listed(growth) == {runs["campaign"].pk, runs["shop"].pk}
    assert listed(growth, workflow="payroll") == set()
    assert listed(growth, status="failed", limit=1) <= {runs["campaign"].pk, runs["shop"].pk}
    assert listed(everyone) == {run.pk for run in runs.values()}


def test_another_teams_run_is_404_for_reading_cancelling_and_replaying(growth, everyone, world):
    payroll_run = world["runs"]["payroll"]
    replay_of_payroll = replays.replay_run(run_id=payroll_run.pk, actor="alice")
    base = f"/api/v1/runs/{payroll_run.pk}"

    for method, path, data in [
        ("get", "", None),
        ("post", "/cancel", None),
        ("post", "/replay", {"reason": "mine"}),
        ("get", "/replay-preview", None),
    ]:
        # The same answer as for a run that does not exist: nothing tells the two apart.
        assert same_as_unknown(
            growth(method, f"{base}{path}", data),
            growth(method, f"/api/v1/runs/{UNKNOWN}{path}", data),
            payroll_run.pk,
        )
    not_found(growth("get", f"/api/v1/runs/{replay_of_payroll.pk}/compare"))

    assert list(Run.objects.filter(replay_of=payroll_run)) == [replay_of_payroll]
    assert not AuditEntry.objects.filter(actor="token:growth-ci")
    # The teamless token sees the run: the failed run cannot be cancelled, but exists.
    assert everyone("get", base).status_code == 200
    assert everyone("post", f"{base}/cancel").status_code == 409
    assert everyone("get", f"{base}/replay-preview").status_code == 200


def test_a_team_token_replays_its_teams_and_everyones_runs(growth, world):
    for slug in ("campaign", "shop"):
        run = world["runs"][slug]
        assert growth("get", f"/api/v1/runs/{run.pk}").json()["workflow"] == slug
        assert growth("get", f"/api/v1/runs/{run.pk}/replay-preview").status_code == 200
        replayed = growth("post", f"/api/v1/runs/{run.pk}/replay", {"reason": "fixed"})
        assert replayed.status_code == 201, replayed.content
        assert replayed.json()["replay_of"] == run.pk


# --- the event store -----------------------------------------------------------------------------


def event_ids(caller: Caller, **query) -> set[int]:
    response = caller("get", "/api/v1/events", **query)
    assert response.status_code == 200, response.content
    return {event["id"] for event in response.json()["events"]}


def test_the_event_list_leaves_out_another_teams_run_events_only(growth, everyone, world):
    run_events = {
        slug: set(
            Event.objects.filter(type__startswith="signalbox.run.", subject=slug).values_list(
                "pk", flat=True
            )
        )
        for slug in world["runs"]
    }
    triggers = {run.event_id for run in world["runs"].values()}
    assert all(run_events.values())

    seen = event_ids(growth, limit=500)
    assert not seen & run_events["payroll"]
    assert run_events["campaign"] | run_events["shop"] | triggers <= seen
    failed = event_ids(growth, type="signalbox.run.failed")
    assert {Event.objects.get(pk=pk).subject for pk in failed} == {"campaign", "shop"}
    assert run_events["payroll"] <= event_ids(everyone, limit=500)


def test_an_event_shows_only_the_runs_the_token_may_see(growth, everyone, world):
    payroll_run, shop_run = world["runs"]["payroll"], world["runs"]["shop"]
    # One event starting runs of two workflows: the shop's and finance's payroll.
    Run.objects.filter(pk=shop_run.pk).update(event=payroll_run.event_id)

    mine = growth("get", f"/api/v1/events/{payroll_run.event_id}")
    theirs = everyone("get", f"/api/v1/events/{payroll_run.event_id}")

    assert mine.status_code == 200
    assert [run["id"] for run in mine.json()["runs"]] == [shop_run.pk]
    assert [run["id"] for run in theirs.json()["runs"]] == sorted([payroll_run.pk, shop_run.pk])


def test_another_teams_run_event_is_404_and_everyones_is_shown(growth, everyone):
    hidden = Event.objects.filter(type="signalbox.run.failed", subject="payroll").get()
    shown = Event.objects.filter(type="signalbox.run.failed", subject="shop").get()

    not_found(growth("get", f"/api/v1/events/{hidden.pk}"))
    assert growth("get", f"/api/v1/events/{shown.pk}").status_code == 200
    assert everyone("get", f"/api/v1/events/{hidden.pk}").status_code == 200


def test_sending_events_is_the_same_for_a_team_token(growth, monkeypatch):
    from workflows.events import bus

    monkeypatch.setattr(bus, "publish_many", lambda events: None)  # keep it off the bus
    sent = growth.client.post(
        "/api/v1/events",
        data=json.dumps(cloudevent(PAYROLL, id="team-sent")),
        content_type="application/cloudevents+json",
        HTTP_AUTHORIZATION=growth.header,
    )
    assert sent.status_code == 202, sent.content
    assert Event.objects.filter(ce_id="team-sent", type=PAYROLL).exists()


# --- dead letters --------------------------------------------------------------------------------


def letter_ids(caller: Caller, **query) -> tuple[set[int], int]:
    response = caller("get", "/api/v1/dead-letters", **query)
    assert response.status_code == 200, response.content
    return {x["id"] for x in response.json()["dead_letters"]}, response.json()["open"]


def test_the_dead_letter_list_leaves_out_another_teams_letters(growth, everyone, world):
    letters = world["letters"]

    assert letter_ids(growth, state="all") == ({letters["campaign"].pk, letters["shop"].pk}, 2)
    assert letter_ids(growth, kind="step") == ({letters["campaign"].pk, letters["shop"].pk}, 2)
    assert letter_ids(everyone, state="all") == ({x.pk for x in letters.values()}, 3)


def test_another_teams_dead_letter_is_404_and_untouched(growth, everyone, world):
    letter = world["letters"]["payroll"]
    base = f"/api/v1/dead-letters/{letter.pk}"

    for method, path, data in [
        ("get", "", None),
        ("patch", "", {"payload": {"input": {"n": 2}}, "reason": "mine now"}),
        ("post", "/redrive", {"reason": "go"}),
        ("post", "/discard", {"reason": "not mine"}),
    ]:
        assert same_as_unknown(
            growth(method, f"{base}{path}", data),
            growth(method, f"/api/v1/dead-letters/{UNKNOWN}{path}", data),
            letter.pk,
        )

    after = DeadLetter.objects.get(pk=letter.pk)
    assert after.resolved_at is None and after.payload == letter.payload
    assert after.original_payload is None
    assert not AuditEntry.objects.filter(target_type="dead_letter", target_id=str(letter.pk))
    assert not Run.objects.filter(replay_of=world["runs"]["payroll"]).exists()
    assert everyone("get", base).status_code == 200


def test_a_team_token_edits_and_discards_its_teams_and_everyones_letters(growth, world):
    campaign, shop = world["letters"]["campaign"], world["letters"]["shop"]

    edited = growth("patch", f"/api/v1/dead-letters/{campaign.pk}", {"payload": {"input": {}}})
    discarded = growth("post", f"/api/v1/dead-letters/{shop.pk}/discard", {"reason": "junk"})

    assert edited.status_code == 200 and edited.json()["edited"] is True
    assert discarded.status_code == 200 and discarded.json()["resolved"] is True


def test_a_bulk_re_drive_answers_another_teams_letters_as_unknown_ones(growth, world):
    hidden, shop = world["letters"]["payroll"], world["letters"]["shop"]
    ids = [hidden.pk, shop.pk, UNKNOWN]

    response = growth("post", "/api/v1/dead-letters/redrive", {"ids": ids, "reason": "bulk"})

    assert response.status_code == 207
    results = response.json()["results"]
    assert [r["id"] for r in results] == ids
    assert results[0] == {"id": hidden.pk, "ok": False, "error": f"no dead letter {hidden.pk}"}
    assert results[2] == {"id": UNKNOWN, "ok": False, "error": f"no dead letter {UNKNOWN}"}
    assert results[1]["ok"] is True
    assert DeadLetter.objects.get(pk=shop.pk).resolved_at is not None
    assert DeadLetter.objects.get(pk=hidden.pk).resolved_at is None
    assert not Run.objects.filter(replay_of=world["runs"]["payroll"]).exists()


def test_re_driving_a_letter_leaves_the_runs_of_another_team_out_of_the_answer(growth, world):
    """A bus letter of an event that both payroll and campaign take: matched again, it
    starts a run of each; the growth token is told of its own only."""
    publish("campaign", definition(FAIL, event=PAYROLL))
    event, _ = ingest_event(envelope=from_structured(cloudevent(PAYROLL)), publish=False)
    letter = DeadLetter.objects.create(
        kind="bus", reason="delivered too often", event=event, payload={"event_id": event.pk}
    )

    response = growth("post", f"/api/v1/dead-letters/{letter.pk}/redrive", {"reason": "retry"})

    assert response.status_code == 200, response.content
    started = dict(Run.objects.filter(event=event).values_list("workflow__slug", "pk"))
    assert set(started) == {"payroll", "campaign"}
    assert response.json()["runs"] == [started["campaign"]]


# --- re-drive, bulk replays and batches ----------------------------------------------------------


def test_re_driving_events_into_another_teams_workflow_answers_as_an_unknown_one(growth):
    hidden = not_found(growth("post", "/api/v1/redrive", {"type": PAYROLL, "workflow": "payroll"}))
    unknown = not_found(growth("post", "/api/v1/redrive", {"type": PAYROLL, "workflow": "nobody"}))
    own = growth("post", "/api/v1/redrive", {"type": ORDERS, "workflow": "shop", "dry_run": True})

    assert hidden["detail"] == "no workflow payroll" and unknown["detail"] == "no workflow nobody"
    assert hidden["type"] == unknown["type"] and hidden["title"] == unknown["title"]
    assert own.status_code == 200, own.content
    assert not Run.objects.filter(origin="redrive").exists()


def test_a_bulk_replay_selects_only_runs_the_token_may_see(growth, everyone, world):
    runs = world["runs"]

    def matched(caller: Caller, **selection) -> set[int]:
        response = caller("post", "/api/v1/replays", {"filter": selection, "dry_run": True})
        assert response.status_code == 200, response.content
        return {r["id"] for r in response.json()["runs"]}

    assert matched(growth) == {runs["campaign"].pk, runs["shop"].pk}
    assert matched(growth, workflow="payroll") == set()
    assert matched(everyone) == {run.pk for run in runs.values()}

    started = growth("post", "/api/v1/replays", {"filter": {}, "reason": "all"})
    assert started.status_code == 202, started.content
    batch = ReplayBatch.objects.get(pk=started.json()["id"])
    assert sorted(batch.selection["run_ids"]) == sorted([runs["campaign"].pk, runs["shop"].pk])


def test_a_batch_over_another_teams_run_is_404(growth, everyone, world):
    runs = world["runs"]
    theirs = replays.start_bulk_replay(
        actor="alice", run_ids=[runs["payroll"].pk, runs["shop"].pk], selection={}
    )
    ours = replays.start_bulk_replay(actor="alice", run_ids=[runs["shop"].pk], selection={})

    not_found(growth("get", f"/api/v1/replays/{theirs.pk}"))
    assert growth("get", f"/api/v1/replays/{ours.pk}").json()["id"] == ours.pk
    assert everyone("get", f"/api/v1/replays/{theirs.pk}").status_code == 200


# --- the audit trail -----------------------------------------------------------------------------


def test_the_audit_trail_leaves_out_entries_about_another_teams_workflows(growth, everyone, world):
    runs = world["runs"]
    entries = {
        "payroll": audit.record(
            actor="alice", action="test.note", target_type="workflow", target_id="payroll"
        ),
        "payroll run": audit.record(
            actor="alice", action="test.note", target_type="run", target_id=runs["payroll"].pk
        ),
        "shop": audit.record(
            actor="alice", action="test.note", target_type="workflow", target_id="shop"
        ),
        "campaign run": audit.record(
            actor="alice", action="test.note", target_type="run", target_id=runs["campaign"].pk
        ),
    }

    def trail(caller: Caller, **query) -> list[int]:
        response = caller("get", "/api/v1/audit", action="test.note", **query)
        assert response.status_code == 200, response.content
        return [e["id"] for e in response.json()["entries"]]

    assert trail(growth) == [entries["campaign run"].pk, entries["shop"].pk]
    assert trail(everyone) == sorted((e.pk for e in entries.values()), reverse=True)
    first = growth("get", "/api/v1/audit", action="test.note", limit=1).json()
    assert [e["id"] for e in first["entries"]] == [entries["campaign run"].pk]
    assert trail(growth, before_id=first["next_before_id"]) == [entries["shop"].pk]


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_need_a_token_of_no_team(growth, everyone):
    refused = growth("get", "/metrics")

    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/forbidden")
    scraped = everyone("get", "/metrics")
    assert scraped.status_code == 200, scraped.content
    assert b"signalbox_" in scraped.content
