"""The recovery pages keep a team's work to the team: dead letters, the re-drive page and the
audit trail leave out (or answer 404 for) what belongs to a workflow of another team,
while the team's members and admins see and act on everything as before.

Every outsider here holds the operator role, so the role checks pass and only visibility is
tested. Runs are driven in this process (tests/runs_here.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from tests.accounts import sign_in
from tests.factories import cloudevent, definition
from tests.runs_here import drive, publish, trigger
from workflows.access import audit
from workflows.access.models import AuditEntry
from workflows.access.roles import ensure_groups
from workflows.catalog.models import Workflow
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter, Event
from workflows.recovery import dead_letters as dlq
from workflows.recovery import replay as replays
from workflows.recovery import selectors as recovery
from workflows.recovery.redrive import EventSelection, redrive_events
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db

PAYROLL = "com.example.payroll.due"  # only the finance team's workflow takes it
ORDERS = "com.example.order.placed"  # only the shop (everyone's) takes it
FAIL = {"id": "boom", "kind": "fail", "config": {"message": "broken"}}


def user_client(name: str, role: str, *teams: Group) -> Client:
    return sign_in(Client(), name, role, *teams)


def unmatched_event() -> Event:
    """A stored event no workflow takes."""
    event, _ = ingest_event(
        envelope=from_structured(cloudevent("com.example.nobody.cares")), publish=False
    )
    return event


@pytest.fixture
def world(db, monkeypatch):
    """The finance team's `payroll` and everyone's `shop`, one failed run each, and a dead
    letter of every kind attributed to payroll (`hidden`) or to no team (`public`)."""
    monkeypatch.setattr("workflows.recovery.replay_batches._enqueue_batch", lambda batch_id: None)
    finance = Group.objects.create(name="finance")
    publish("payroll", definition(FAIL, event=PAYROLL))
    Workflow.objects.filter(slug="payroll").update(team=finance)
    publish("shop", definition(FAIL, event=ORDERS))
    payroll_run = drive(trigger("payroll", {"n": 1}, type=PAYROLL))
    shop_run = drive(trigger("shop", {"n": 1}, type=ORDERS))
    assert payroll_run.status == shop_run.status == "failed"
    payroll_run_event = Event.objects.get(type="signalbox.run.failed", subject="payroll")
    run_event_payload = {
        "channel": "run",
        "cloudevent": cloudevent("signalbox.run.failed", sbworkflow="payroll"),
    }
    hidden = {
        "step": DeadLetter.objects.get(kind="step", run=payroll_run),
        "step of a deleted run": DeadLetter.objects.create(
            kind="step", reason="boom", payload={"run": 10**9, "workflow": "payroll"}
        ),
        "run event": DeadLetter.objects.create(
            kind="event", reason="schema", run=payroll_run, payload=run_event_payload
        ),
        "run event of a deleted run": DeadLetter.objects.create(
            kind="event", reason="schema", payload=run_event_payload
        ),
        "depth guard": DeadLetter.objects.create(
            kind="event",
            reason="causation chain is 8 deep",
            event=unmatched_event(),
            payload={"guard": "causation-depth", "workflows": ["shop", "payroll"]},
        ),
        "bus entry of an event that started a team run": DeadLetter.objects.create(
            kind="bus",
            reason="delivered too often",
            event=payroll_run.event,
            payload={"stream": "s", "entry_id": "1-0", "event_id": payroll_run.event_id},
        ),
        "bus entry of a team run event": DeadLetter.objects.create(
            kind="bus",
            reason="delivered too often",
            event=payroll_run_event,
            payload={"stream": "s", "entry_id": "2-0", "event_id": payroll_run_event.pk},
        ),
    }
    quiet = unmatched_event()
    public = {
        "step": DeadLetter.objects.get(kind="step", run=shop_run),
        # A step letter is its run's: another workflow its event started does not matter.
        "step whose event also started a team run": DeadLetter.objects.create(
            kind="step", reason="boom", run=shop_run, event=payroll_run.event, payload={}
        ),
        "bus entry of an event no workflow takes": DeadLetter.objects.create(
            kind="bus",
            reason="delivered too often",
            event=quiet,
            payload={"stream": "s", "entry_id": "3-0", "event_id": quiet.pk},
        ),
        "stream entry": DeadLetter.objects.create(
            kind="event",
            reason="not a CloudEvent",
            payload={"channel": "stream", "source": "orders", "entry_id": "4-0", "fields": {}},
        ),
        "schedule tick": DeadLetter.objects.create(
            kind="event",
            reason="schedule nightly: data does not match its schema",
            payload={"channel": "schedule", "schedule": "nightly", "cloudevent": cloudevent()},
        ),
    }
    return {
        "team": finance,
        "payroll": Workflow.objects.get(slug="payroll"),
        "payroll_run": payroll_run,
        "shop_run": shop_run,
        "hidden": hidden,
        "public": public,
    }


def rows(page: str) -> set[int]:
    return {
        letter.pk for letter in DeadLetter.objects.all() if f'id="dead-letter-{letter.pk}"' in page
    }


# --- dead letters --------------------------------------------------------------------------------


def test_an_outsider_sees_none_of_the_teams_dead_letters_in_the_list(world):
    outsider = user_client("outsider", "operator")

    page = outsider.get("/dead-letters/", {"state": "all"}).content.decode()
    open_page = outsider.get("/dead-letters/").content.decode()

    assert rows(page) == {letter.pk for letter in world["public"].values()}
    assert f'id="open-count">{len(world["public"])} open<' in open_page
    for kind in ("step", "event", "bus"):
        listed = rows(outsider.get("/dead-letters/", {"kind": kind}).content.decode())
        assert listed == {ltr.pk for ltr in world["public"].values() if ltr.kind == kind}


@pytest.mark.parametrize(
    "name",
    [
        "step",
        "step of a deleted run",
        "run event",
        "run event of a deleted run",
        "depth guard",
        "bus entry of an event that started a team run",
        "bus entry of a team run event",
    ],
)
def test_an_outsider_gets_404_on_a_team_dead_letter_and_cannot_act_on_it(world, name):
    outsider = user_client("outsider", "operator")
    letter = world["hidden"][name]
    base = f"/dead-letters/{letter.pk}"

    answers = [
        outsider.get(f"{base}/").status_code,
        outsider.post(f"{base}/edit/", {"payload": "{}", "reason": "mine now"}).status_code,
        outsider.post(f"{base}/redrive/", {"reason": "go"}).status_code,
        outsider.post(f"{base}/discard/", {"reason": "not mine"}).status_code,
    ]

    assert answers == [404, 404, 404, 404]
    after = DeadLetter.objects.get(pk=letter.pk)
    assert after.resolved_at is None and after.payload == letter.payload
    assert not AuditEntry.objects.filter(target_type="dead_letter", target_id=str(letter.pk))
    assert not Run.objects.filter(replay_of=world["payroll_run"]).exists()


def test_an_outsider_can_still_open_and_act_on_letters_of_no_team(world):
    outsider = user_client("outsider", "operator")
    for letter in world["public"].values():
        assert outsider.get(f"/dead-letters/{letter.pk}/").status_code == 200
    stream = world["public"]["stream entry"]

    answer = outsider.post(f"/dead-letters/{stream.pk}/discard/", {"reason": "junk"})

    assert answer.status_code == 302
    assert DeadLetter.objects.get(pk=stream.pk).resolution == "discarded: junk"


def test_a_bulk_re_drive_refuses_the_teams_letters_like_unknown_ones_and_does_the_rest(world):
    outsider = user_client("outsider", "operator")
    hidden = [world["hidden"]["step"], world["hidden"]["bus entry of a team run event"]]
    quiet = world["public"]["bus entry of an event no workflow takes"]
    ids = [hidden[0].pk, quiet.pk, hidden[1].pk, 10**9]

    selected = {"ids": [str(i) for i in ids], "reason": "bulk"}
    preview = outsider.post("/dead-letters/", selected).content.decode()
    page = outsider.post("/dead-letters/", {**selected, "confirm": "yes"}).content.decode()

    def row(prefix: str, letter_id: int, text: str) -> str:
        start = text.index(f'id="{prefix}-{letter_id}"')
        return text[start : text.index("</tr>", start)]

    for letter_id in (hidden[0].pk, hidden[1].pk, 10**9):
        # The preview and the outcome tell a team's letter apart from no letter at all.
        assert row("redrive-preview", letter_id, preview).count("no such dead letter") == 1
        assert "payroll" not in row("redrive-preview", letter_id, preview)
        assert 'data-can="false"' in row("redrive-preview", letter_id, preview)
        assert "no such dead letter" in row("redrive-result", letter_id, page)
        assert 'data-ok="false"' in row("redrive-result", letter_id, page)
    assert 'data-can="true"' in row("redrive-preview", quiet.pk, preview)
    assert f"event {quiet.event_id} matched again (0 new run(s))" in row(
        "redrive-result", quiet.pk, page
    )
    assert DeadLetter.objects.get(pk=quiet.pk).resolved_at is not None
    assert not DeadLetter.objects.filter(pk__in=[h.pk for h in hidden], resolved_at__isnull=False)
    assert not Run.objects.filter(replay_of=world["payroll_run"]).exists()


def test_a_team_member_and_an_admin_see_the_teams_dead_letters(world):
    member = user_client("member", "operator", world["team"])
    admin = user_client("boss", "admin")
    everything = {ltr.pk for ltr in [*world["hidden"].values(), *world["public"].values()]}

    for client in (member, admin):
        assert rows(client.get("/dead-letters/", {"state": "all"}).content.decode()) == everything
        assert (
            f'id="open-count">{len(everything)} open<'
            in client.get("/dead-letters/").content.decode()
        )
        for letter in world["hidden"].values():
            assert client.get(f"/dead-letters/{letter.pk}/").status_code == 200


def test_a_team_member_and_an_admin_act_on_the_teams_dead_letters(world):
    member = user_client("member", "operator", world["team"])
    admin = user_client("boss", "admin")
    guard, step = world["hidden"]["depth guard"], world["hidden"]["step"]

    discarded = member.post(f"/dead-letters/{guard.pk}/discard/", {"reason": "chain is fine"})
    redriven = admin.post(f"/dead-letters/{step.pk}/redrive/", {"reason": "fixed"})

    assert discarded.status_code == 302
    assert DeadLetter.objects.get(pk=guard.pk).resolved_by == "member"
    [replay] = Run.objects.filter(replay_of=world["payroll_run"])
    assert redriven.status_code == 302 and redriven["Location"] == f"/runs/{replay.pk}/"
    assert DeadLetter.objects.get(pk=step.pk).resolved_by == "boss"


def test_re_driving_a_letter_that_becomes_the_teams_sends_an_outsider_back_to_the_list(world):
    """The bus letter's event is matched again and now starts a run of payroll: the run and
    from then on the letter are the team's, so the outsider is not sent to either."""
    outsider = user_client("outsider", "operator")
    event, _ = ingest_event(envelope=from_structured(cloudevent(PAYROLL)), publish=False)
    letter = DeadLetter.objects.create(
        kind="bus", reason="delivered too often", event=event, payload={"event_id": event.pk}
    )
    assert outsider.get(f"/dead-letters/{letter.pk}/").status_code == 200

    answer = outsider.post(f"/dead-letters/{letter.pk}/redrive/", {"reason": "retry"})

    assert Run.objects.filter(event=event, workflow__slug="payroll").count() == 1
    assert answer.status_code == 302 and answer["Location"] == "/dead-letters/"
    assert outsider.get(f"/dead-letters/{letter.pk}/").status_code == 404


# --- the re-drive page ---------------------------------------------------------------------------


def test_the_redrive_page_offers_previews_and_delivers_only_workflows_the_user_may_see(world):
    outsider = user_client("outsider", "operator")

    form = outsider.get("/redrive/").content.decode()
    preview = outsider.get("/redrive/", {"type": PAYROLL, "workflow": "payroll"})
    delivered = outsider.post(
        "/redrive/", {"type": PAYROLL, "workflow": "payroll", "reason": "backfill"}
    )
    own = outsider.get("/redrive/", {"type": ORDERS, "workflow": "shop"}).content.decode()

    assert '<option value="shop"' in form and '<option value="payroll"' not in form
    assert preview.status_code == 404 and delivered.status_code == 404
    assert not Run.objects.filter(origin="redrive").exists()
    assert not AuditEntry.objects.filter(action="events.redrive").exists()
    assert 'id="redrive-plan"' in own and "1 run(s) of <code>shop</code>" in own


def test_a_team_member_and_an_admin_re_drive_into_the_teams_workflow(world):
    member = user_client("member", "operator", world["team"])
    admin = user_client("boss", "admin")

    for client in (member, admin):
        form = client.get("/redrive/").content.decode()
        preview = client.get("/redrive/", {"type": PAYROLL, "workflow": "payroll"})
        assert '<option value="payroll"' in form
        assert preview.status_code == 200
        assert "1 run(s) of <code>payroll</code> v1 would start" in preview.content.decode()
    delivered = member.post(
        "/redrive/", {"type": PAYROLL, "workflow": "payroll", "reason": "backfill"}
    )

    assert delivered.status_code == 200
    [run] = Run.objects.filter(origin="redrive")
    assert run.workflow.slug == "payroll" and run.event_id == world["payroll_run"].event_id


# --- the audit trail -----------------------------------------------------------------------------


@pytest.fixture
def trail(world) -> dict[str, list[AuditEntry]]:
    """Audit entries about payroll (by target: workflow, run, batch, dead letter) and about
    no team, written by the services that write them."""
    payroll_run, shop_run = world["payroll_run"], world["shop_run"]

    def newest(action: str) -> AuditEntry:
        return AuditEntry.objects.filter(action=action).latest("id")

    hidden, public = [], []
    for run, into in ((payroll_run, hidden), (shop_run, public)):
        replays.replay_run(run_id=run.pk, actor="alice", reason="fixed")
        into.append(newest("run.replay"))
        replays.start_bulk_replay(
            actor="alice", run_ids=[run.pk], selection={}, version="latest", per_second=50
        )
        into.append(newest("replay.bulk"))
    for slug, event_type, into in (("payroll", PAYROLL, hidden), ("shop", ORDERS, public)):
        redrive_events(workflow_slug=slug, selection=EventSelection(type=event_type), actor="alice")
        into.append(newest("events.redrive"))
    dlq.discard(letter_id=world["hidden"]["depth guard"].pk, actor="alice", reason="fine")
    hidden.append(newest("dead_letter.discard"))
    dlq.discard(letter_id=world["public"]["stream entry"].pk, actor="alice", reason="junk")
    public.append(newest("dead_letter.discard"))
    assert len(hidden) == len(public) == 4
    assert AuditEntry.objects.count() == 8
    return {"hidden": hidden, "public": public}


def audit_rows(page: str) -> set[int]:
    return {e.pk for e in AuditEntry.objects.all() if f'id="audit-{e.pk}"' in page}


def test_the_audit_page_leaves_out_entries_about_the_teams_workflow_for_an_outsider(trail, world):
    outsider = user_client("outsider", "operator")

    page = outsider.get("/audit/").content.decode()
    by_run = outsider.get(
        "/audit/", {"target_type": "run", "target_id": world["payroll_run"].pk}
    ).content.decode()

    assert audit_rows(page) == {e.pk for e in trail["public"]}
    assert audit_rows(by_run) == set() and "Nothing recorded yet." in by_run


def test_a_team_member_and_an_admin_see_the_whole_audit_trail(trail):
    member = user_client("member", "viewer", Group.objects.get(name="finance"))
    admin = user_client("boss", "admin")
    everything = {e.pk for e in [*trail["hidden"], *trail["public"]]}

    for client in (member, admin):
        assert audit_rows(client.get("/audit/").content.decode()) == everything


def test_an_audit_page_is_filled_past_hidden_entries_and_the_next_page_skips_none(
    world, monkeypatch
):
    hidden = frozenset({world["payroll"].pk})

    def note(target: str) -> AuditEntry:
        return audit.record(actor="t", action="test.note", target_type="workflow", target_id=target)

    older, newer = note("shop"), note("shop")
    for _ in range(3):
        note("payroll")

    def pages(before_id=None) -> list[list[int]]:
        found = []
        while True:
            page, before_id = recovery.visible_audit_entries(
                hidden=hidden, action="test.note", limit=1, before_id=before_id
            )
            found.append([e.pk for e in page])
            if before_id is None:
                return found

    assert pages() == [[newer.pk], [older.pk]]
    # Reading stops after one chunk: the first page comes back short, and the next one
    # carries on from where the reading stopped.
    monkeypatch.setattr(recovery, "AUDIT_SCAN_ROUNDS", 1)
    assert [pk for page in pages() for pk in page] == [newer.pk, older.pk]
    assert pages()[0] == []


def test_the_overview_counts_only_the_dead_letters_the_user_may_see(world):
    from dashboard import metrics
    from workflows.queries.dashboard import hidden_workflow_ids

    ensure_groups()
    outsider = get_user_model().objects.create_user("counted", password="not-used")
    outsider.groups.add(Group.objects.get(name="operator"))
    everything = len(world["public"]) + len(world["hidden"])

    hidden = hidden_workflow_ids(outsider)
    assert metrics.compute_overview("15m", hidden=hidden).figures["dead_letters"] == len(
        world["public"]
    )
    assert metrics.compute_overview("15m").figures["dead_letters"] == everything
