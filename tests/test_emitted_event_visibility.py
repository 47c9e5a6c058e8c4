"""What a team's workflow emits is as hidden as the team's runs: the events its `emit_event`
steps publish (and a `sub_workflow` step's trigger event) are left out of the event list,
answer 404 (4404 for the lineage socket), never
reach the live flow and are not drawn in lineage graphs, for a dashboard user outside the
team and an API token of another team, by the same rule that hides the team's run events.
A team member and a token of no team see them.

The world, driven in this process: `payroll` (team finance) announces com.example.payroll.paid,
which `ledger` (no team) listens to and answers with com.example.ledger.booked; `shop` (no
team) announces com.example.order.shipped."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, User
from django.db import connections
from django.test import Client
from django.utils import timezone

from dashboard import metrics
from dashboard.live import consumers as live_consumers
from orchestrator.asgi import application
from tests.accounts import sign_in
from tests.factories import definition, log_step
from tests.runs_here import drive, in_this_process, publish, trigger
from workflows.access.tokens import create_api_token
from workflows.catalog.models import Workflow
from workflows.events.models import DeadLetter, Event
from workflows.live import notify
from workflows.queries import events as store
from workflows.queries.dashboard import hidden_workflow_ids
from workflows.recovery import selectors as recovery
from workflows.runs.matching import match_event
from workflows.runs.models import Run

PAYROLL_DUE = "com.example.payroll.due"
PAID = "com.example.payroll.paid"
BOOKED = "com.example.ledger.booked"
ORDER = "com.example.order.placed"
SHIPPED = "com.example.order.shipped"
ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 10


def emit_step(step_id: str, event_type: str, **config) -> dict:
    return {
        "id": step_id,
        "kind": "emit_event",
        "config": {"type": event_type, "data": {"amount": 1200}, **config},
    }


def build_world() -> dict:
    finance = Group.objects.create(name="finance")
    publish("payroll", definition(emit_step("announce", PAID), event=PAYROLL_DUE))
    Workflow.objects.filter(slug="payroll").update(team=finance)
    publish("ledger", definition(emit_step("book", BOOKED), event=PAID))
    publish("shop", definition(emit_step("ship", SHIPPED), event=ORDER))
    return {"team": finance, **run_payroll(), **run_shop()}


def run_payroll() -> dict:
    payroll = drive(trigger("payroll", {"month": 5}, type=PAYROLL_DUE))
    paid = Event.objects.filter(type=PAID).latest("id")
    with in_this_process():  # what the bus consumer does with the emitted event
        ledger = next(r for r in match_event(event_id=paid.pk) if r.workflow.slug == "ledger")
    drive(ledger)
    return {
        "payroll_run": payroll,
        "paid": paid,
        "ledger_run": ledger,
        "booked": Event.objects.filter(type=BOOKED).latest("id"),
    }


def run_shop() -> dict:
    shop = drive(trigger("shop", {"order": 7}, type=ORDER))
    return {"shop_run": shop, "shipped": Event.objects.filter(type=SHIPPED).latest("id")}


def payroll_events(world) -> set[int]:
    """Everything payroll's run produced: its run events and what its step emitted."""
    run = world["payroll_run"]
    return set(
        Event.objects.filter(source=f"/signalbox/runs/{run.pk}").values_list("pk", flat=True)
    ) | set(
        Event.objects.filter(type__startswith="signalbox.run.", subject="payroll").values_list(
            "pk", flat=True
        )
    )


@pytest.fixture
def world(db):
    return build_world()


def viewer(*teams: Group) -> Client:
    return sign_in(Client(), "member" if teams else "outsider", "viewer", *teams)


def listed_ids(page: str) -> set[int]:
    return {int(n) for n in re.findall(r'href="/events/(\d+)/"', page)}


# --- what the emitted event carries ---------------------------------------------------------------
def test_an_emitted_event_names_its_workflow_on_the_run_channel(world):
    paid, payroll = world["paid"], world["payroll_run"]

    assert paid.channel == "run" and paid.source == f"/signalbox/runs/{payroll.pk}"
    assert paid.extensions["sbworkflow"] == "payroll"
    assert world["shipped"].extensions["sbworkflow"] == "shop"
    assert world["booked"].extensions["sbworkflow"] == "ledger"


def test_a_workflow_may_still_start_itself_with_what_it_emits(db):
    # sbworkflow on emitted events keeps the loop guard to run events: an echo starts the
    # next echo (the causation depth guard bounds the chain), as before.
    publish("echo", definition(emit_step("again", "com.example.echo"), event="com.example.echo"))
    first = drive(trigger("echo", type="com.example.echo"))
    emitted = Event.objects.get(source=f"/signalbox/runs/{first.pk}")

    with in_this_process():
        started = match_event(event_id=emitted.pk)

    assert [r.workflow.slug for r in started] == ["echo"]


def test_the_rule_hides_the_teams_run_events_and_emitted_events_and_nothing_else(world):
    outsider = User.objects.create_user("outsider")
    hidden = hidden_workflow_ids(outsider)
    everything = set(Event.objects.values_list("pk", flat=True))

    visible = store.visible_events(Event.objects.all(), hidden=hidden)
    left_out = everything - set(visible.values_list("pk", flat=True))

    assert hidden == {world["payroll_run"].workflow_id}
    assert left_out == payroll_events(world) and world["paid"].pk in left_out
    assert world["payroll_run"].event_id not in left_out  # the outside event that started it
    assert store.is_hidden(world["paid"], hidden=hidden)
    assert not store.is_hidden(world["booked"], hidden=hidden)


def test_an_event_emitted_before_events_named_their_workflow_is_known_by_its_source(world):
    paid, shipped = world["paid"], world["shipped"]
    for event in (paid, shipped):
        old = {k: v for k, v in event.extensions.items() if k != "sbworkflow"}
        Event.objects.filter(pk=event.pk).update(extensions=old)
    hidden = frozenset({world["payroll_run"].workflow_id})

    assert store.event_detail(paid.pk, hidden=hidden) is None
    assert store.event_detail(paid.pk, hidden=frozenset()) is not None
    assert store.event_detail(shipped.pk, hidden=hidden) is not None
    shown, _more = store.events(store.EventQuery(limit=500), hidden=hidden)
    assert shipped.pk in {e.pk for e in shown} and paid.pk not in {e.pk for e in shown}


def test_an_outside_event_cannot_claim_to_be_a_teams(world):
    """Only Signalbox ingests on the run channel: an HTTP event that carries the team's
    workflow and a run's source is everyone's, not hidden."""
    payroll = world["payroll_run"]
    forged = trigger(
        "shop",
        type=ORDER,
        source=f"/signalbox/runs/{payroll.pk}",
        sbworkflow="payroll",
    ).event
    hidden = frozenset({payroll.workflow_id})

    assert forged.channel != "run"
    assert store.event_detail(forged.pk, hidden=hidden) is not None


# --- the dashboard's event pages ----------------------------------------------------------------
def test_an_outsider_sees_neither_the_emitted_event_nor_its_page(world):
    outsider = viewer()
    paid = world["paid"]

    listed = listed_ids(outsider.get("/events/", {"limit": 500}).content.decode())
    assert not listed & payroll_events(world)
    assert {world["shipped"].pk, world["booked"].pk, world["payroll_run"].event_id} <= listed
    assert not listed_ids(outsider.get("/events/", {"type": PAID}).content.decode())
    assert outsider.get(f"/events/{paid.pk}/").status_code == 404
    assert outsider.get(f"/flow/events/{paid.pk}/").status_code == 404
    assert outsider.get(f"/events/{paid.pk}/lineage/").status_code == 404


def test_a_team_member_sees_the_emitted_event_and_its_page(world):
    member = viewer(world["team"])
    paid = world["paid"]

    listed = listed_ids(member.get("/events/", {"limit": 500}).content.decode())
    assert payroll_events(world) <= listed
    assert member.get(f"/events/{paid.pk}/").status_code == 200
    assert member.get(f"/flow/events/{paid.pk}/").status_code == 200
    assert member.get(f"/events/{paid.pk}/lineage/").status_code == 200


def lineage_nodes(html: str) -> set[str]:
    return set(re.findall(r'id="lineage-node-((?:event|run)-\d+)"', html))


def test_the_lineage_stops_below_the_teams_emitted_event(world):
    booked = world["booked"]
    path = f"/events/{booked.pk}/lineage/"

    outsider = lineage_nodes(viewer().get(path).content.decode())
    member = lineage_nodes(viewer(world["team"]).get(path).content.decode())

    # The member sees the whole chain, from the outside event that started payroll.
    assert {
        f"event-{world['payroll_run'].event_id}",
        f"run-{world['payroll_run'].pk}",
        f"event-{world['paid'].pk}",
        f"run-{world['ledger_run'].pk}",
        f"event-{booked.pk}",
    } <= member
    # The outsider sees what it may: the booked event, not how it came to be.
    assert f"event-{booked.pk}" in outsider
    assert not {f"event-{pk}" for pk in payroll_events(world)} & outsider
    assert f"run-{world['payroll_run'].pk}" not in outsider


def test_the_lineage_of_the_outside_event_draws_no_emitted_event_of_the_team(world):
    path = f"/events/{world['payroll_run'].event_id}/lineage/"

    outsider = lineage_nodes(viewer().get(path).content.decode())
    member = lineage_nodes(viewer(world["team"]).get(path).content.decode())

    assert f"event-{world['paid'].pk}" in member
    assert outsider == {f"event-{world['payroll_run'].event_id}"}


def test_a_sub_workflow_trigger_event_of_a_team_workflow_is_the_teams(db):
    finance = Group.objects.create(name="finance")
    publish("notifier", definition(log_step("say"), event="com.example.unused"))
    publish(
        "bonus",
        definition(
            {"id": "call", "kind": "sub_workflow", "config": {"workflow": "notifier", "input": {}}},
            event=PAYROLL_DUE,
        ),
    )
    Workflow.objects.filter(slug="bonus").update(team=finance)
    parent = drive(trigger("bonus", type=PAYROLL_DUE))
    child = Run.objects.get(parent_step__run=parent)
    outsider = viewer()

    assert child.event.extensions["sbworkflow"] == "bonus"
    assert outsider.get(f"/events/{child.event_id}/").status_code == 404
    assert viewer(finance).get(f"/events/{child.event_id}/").status_code == 200


# --- counts and dead letters --------------------------------------------------------------------
def test_the_overview_counts_no_emitted_event_of_the_team(world):
    since = timezone.now() - timedelta(hours=1)
    hidden = frozenset({world["payroll_run"].workflow_id})

    outsider = {t for _b, t, _n in metrics.event_counts(since, 60, hidden)}
    member = {t for _b, t, _n in metrics.event_counts(since, 60, frozenset())}

    assert PAID in member and PAID not in outsider
    assert {BOOKED, SHIPPED} <= outsider


def test_a_dead_letter_of_the_teams_emitted_event_is_the_teams(world):
    letter = DeadLetter.objects.create(kind="bus", reason="lost", event=world["paid"])
    other = DeadLetter.objects.create(kind="bus", reason="lost", event=world["shipped"])
    hidden = frozenset({world["payroll_run"].workflow_id})

    assert recovery.dead_letter(letter.pk, hidden=hidden) is None
    assert recovery.dead_letter(other.pk, hidden=hidden) is not None
    assert recovery.dead_letter(letter.pk, hidden=frozenset()) is not None


# --- the API --------------------------------------------------------------------------------------
def api(client: Client, plaintext: str, path: str, **query):
    return client.get(path, query, HTTP_AUTHORIZATION=f"Bearer {plaintext}")


def api_event_ids(client, plaintext, **query) -> set[int]:
    response = api(client, plaintext, "/api/v1/events", limit=500, **query)
    assert response.status_code == 200, response.content
    return {event["id"] for event in response.json()["events"]}


def test_a_token_of_another_team_does_not_see_the_emitted_event(client, world):
    growth = Group.objects.create(name="growth")
    _token, plaintext = create_api_token(name="growth-ci", role="viewer", team=growth)
    paid, payroll = world["paid"], world["payroll_run"]

    seen = api_event_ids(client, plaintext)
    assert not seen & payroll_events(world)
    assert {world["shipped"].pk, world["booked"].pk, payroll.event_id} <= seen
    assert not api_event_ids(client, plaintext, type=PAID)
    assert not api_event_ids(client, plaintext, source=f"/signalbox/runs/{payroll.pk}")
    hidden = api(client, plaintext, f"/api/v1/events/{paid.pk}")
    unknown = api(client, plaintext, f"/api/v1/events/{10**9}")
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["detail"] == str(paid.pk) and unknown.json()["detail"] == str(10**9)


@pytest.mark.parametrize("team", ["finance", None])
def test_a_token_of_the_team_or_of_no_team_sees_the_emitted_event(client, world, team):
    _token, plaintext = create_api_token(
        name="ci", role="viewer", team=Group.objects.get(name=team) if team else None
    )
    paid = world["paid"]

    assert payroll_events(world) <= api_event_ids(client, plaintext)
    assert api_event_ids(client, plaintext, type=PAID) == {paid.pk}
    detail = api(client, plaintext, f"/api/v1/events/{paid.pk}")
    assert detail.status_code == 200
    assert detail.json()["cloudevent"]["sbworkflow"] == "payroll"
    assert [run["id"] for run in detail.json()["runs"]] == [world["ledger_run"].pk]


# --- the live flow and lineage sockets -----------------------------------------------------------
@pytest.fixture(autouse=True)
async def close_socket_threads_connections():
    yield
    await sync_to_async(connections.close_all)()


def session_cookie(*teams: str) -> bytes:
    browser = sign_in(Client(), "-".join(("viewer", *teams)), "viewer", *teams)
    return f"sessionid={browser.cookies['sessionid'].value}".encode()


async def connected(path: str, cookie: bytes) -> tuple[WebsocketCommunicator, str]:
    ws = WebsocketCommunicator(application, path, headers=[ORIGIN, (b"cookie", cookie)])
    ok, code = await ws.connect(timeout=TIMEOUT)
    assert ok, code
    return ws, await ws.receive_from(timeout=TIMEOUT)


def row_ids(frame: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="flow-event-(\d+)"', frame)]


@pytest.fixture
def live_world(transactional_db, monkeypatch):
    # Committed data, and maybe a session stack running: what the runs emit must not reach
    # its bus consumer, which would match it before this test does (as tests/test_step_kinds).
    def kept_off_the_bus(event):
        now = timezone.now()
        Event.objects.filter(pk=event.pk).update(published_at=now, matched_at=now)
        return True

    monkeypatch.setattr("workflows.events.bus.publish", kept_off_the_bus)
    world = build_world()
    return {**world, "outsider": session_cookie(), "member": session_cookie("finance")}


async def test_the_flow_snapshot_leaves_out_the_teams_events_for_an_outsider(live_world):
    ws, outsider = await connected("/ws/flow/", live_world["outsider"])
    await ws.disconnect()
    ws, member = await connected("/ws/flow/", live_world["member"])
    await ws.disconnect()
    teams = await database_sync_to_async(payroll_events)(live_world)

    assert live_world["shipped"].pk in row_ids(outsider)
    assert not set(row_ids(outsider)) & teams
    assert live_world["paid"].pk in row_ids(member)


async def test_new_events_of_the_team_never_reach_an_outsiders_flow(live_world):
    ws, _snapshot = await connected("/ws/flow/", live_world["outsider"])
    try:
        # Payroll first, then the shop: a frame that shows the shop's event would carry
        # payroll's newer-than-the-snapshot events too, were they visible.
        again = await database_sync_to_async(run_payroll)()
        shop = await database_sync_to_async(run_shop)()
        frames, shown = [], set()
        while shop["shipped"].pk not in shown:
            frames.append(await ws.receive_from(timeout=TIMEOUT))
            shown |= set(row_ids(frames[-1]))
        teams = await database_sync_to_async(payroll_events)({**live_world, **again})

        assert again["paid"].pk in teams
        assert not shown & teams
        assert again["booked"].pk in shown  # the ledger's answer is everyone's
        assert "com.example.payroll.paid" not in "".join(frames)
    finally:
        await ws.disconnect()


async def test_a_team_member_sees_new_events_of_the_team_in_the_flow(live_world):
    ws, _snapshot = await connected("/ws/flow/", live_world["member"])
    try:
        again = await database_sync_to_async(run_payroll)()
        shown: set[int] = set()
        while again["paid"].pk not in shown:
            shown |= set(row_ids(await ws.receive_from(timeout=TIMEOUT)))
    finally:
        await ws.disconnect()


def test_the_flow_drops_hints_of_events_it_would_not_show(world, monkeypatch):
    """The hint names the event's workflow, so an outsider's paused flow does not count
    the team's events as waiting."""
    sent = []
    monkeypatch.setattr(notify.transaction, "on_commit", lambda callback: callback())
    monkeypatch.setattr(notify, "_send", lambda groups, message: sent.append(message))
    notify.event_ingested(event=world["paid"])
    notify.event_ingested(event=Event.objects.get(pk=world["payroll_run"].event_id))
    flow = live_consumers.FlowConsumer()
    flow.hidden_names = frozenset({"payroll"})
    flow.filter_type = flow.filter_source = flow.filter_channel = flow.filter_workflow = ""
    flow.paused, flow.pending_hints, flow.awaiting = True, 0, {}

    assert [m["workflow"] for m in sent] == ["payroll", None]
    assert [flow.concerns(m) for m in sent] == [False, False]  # paused: counted, not shown
    assert flow.pending_hints == 1


async def test_an_outsider_may_not_follow_the_lineage_of_the_teams_event(live_world):
    paid = live_world["paid"]
    ws = WebsocketCommunicator(
        application,
        f"/ws/lineage/{paid.pk}/",
        headers=[ORIGIN, (b"cookie", live_world["outsider"])],
    )
    ok, code = await ws.connect(timeout=TIMEOUT)
    assert (ok, code) == (False, live_consumers.CLOSE_NOT_FOUND)

    ws, snapshot = await connected(f"/ws/lineage/{paid.pk}/", live_world["member"])
    await ws.disconnect()
    assert f'id="lineage-node-event-{paid.pk}"' in snapshot


async def test_the_lineage_socket_draws_no_event_of_the_team_for_an_outsider(live_world):
    booked = live_world["booked"]
    ws, outsider = await connected(f"/ws/lineage/{booked.pk}/", live_world["outsider"])
    await ws.disconnect()
    ws, member = await connected(f"/ws/lineage/{booked.pk}/", live_world["member"])
    await ws.disconnect()
    teams = await database_sync_to_async(payroll_events)(live_world)

    assert f"event-{booked.pk}" in lineage_nodes(outsider)
    assert not {f"event-{pk}" for pk in teams} & lineage_nodes(outsider)
    assert f"event-{live_world['paid'].pk}" in lineage_nodes(member)
