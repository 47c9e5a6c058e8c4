"""Bulk and shadow replay batches as a demanding operator expects them: a batch whose worker
died is resumed without replaying anything twice, a batch over a team's workflow is that
team's, shadow runs stay out of the ordinary run lists and figures, and the API's page
parameters are parsed (and refused) in one place.

Runs are driven in this process (tests/runs_here.py), except the end-to-end test,
which lets the stack's scheduler find the stranded batch and its worker finish it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from dashboard import metrics
from tests.accounts import sign_in
from tests.factories import definition, log_step
from tests.runs_here import drive, in_this_process, publish, trigger
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import put_workflow
from workflows.catalog.models import Workflow
from workflows.queries import runs as selectors
from workflows.recovery import replay as replays
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run, StepRun

PROBLEM_TYPES = "https://signalbox.dev/problems/"


class WorkerLost(Exception):
    """Raised between two items: the worker died there, after committing what it did."""


def fixed_clock() -> float:
    return 0.0  # every item is "early", so the batch sleeps (and can be stopped) between items


def lose_worker_after(items: int):
    """A `sleep` for process_batch that kills the worker once `items` items are committed."""
    slept = [0]

    def sleep(_seconds: float) -> None:
        slept[0] += 1
        if slept[0] >= items:
            raise WorkerLost

    return sleep


def failed_runs(slug: str, count: int) -> list[Run]:
    """Runs that failed on v1; v2 (published after) fixes them."""
    publish(slug, definition({"id": "boom", "kind": "fail", "config": {"message": "v1 bug"}}))
    runs = [drive(trigger(slug, {"order": n})) for n in range(count)]
    assert all(r.status == "failed" for r in runs)
    publish(slug, definition(log_step("boom", message="fixed")))
    return runs


def bulk(runs: list[Run]) -> ReplayBatch:
    return replays.start_bulk_replay(
        actor="alice",
        run_ids=[r.pk for r in runs],
        selection={"workflow": runs[0].workflow.slug},
        version="latest",
        per_second=50,
    )


def replays_of(run: Run) -> list[Run]:
    return list(Run.objects.filter(replay_of=run, origin="replay"))


@pytest.fixture
def enqueued(monkeypatch) -> list[int]:
    """Batch ids handed to the task, recorded instead of sent to a worker (their creation
    hands them over too: tests clear the list before the sweep)."""
    sent: list[int] = []
    monkeypatch.setattr("workflows.recovery.replay_batches._enqueue_batch", sent.append)
    return sent


# --- stranded batches are resumed --------------------------------------------------------------


def test_a_stranded_batch_is_resumed_and_replays_every_selected_run_exactly_once(db, enqueued):
    originals = failed_runs("stranded", 4)
    batch = bulk(originals)
    with pytest.raises(WorkerLost):
        replays.process_batch(batch_id=batch.pk, sleep=lose_worker_after(2), clock=fixed_clock)
    batch.refresh_from_db()
    assert (batch.status, batch.done, batch.failed) == ("running", 2, 0)
    assert batch.heartbeat_at is not None
    now = timezone.now()
    ReplayBatch.objects.filter(pk=batch.pk).update(heartbeat_at=now - timedelta(minutes=5))
    enqueued.clear()

    resumed = replays.resume_stranded_batches(now=now)

    assert resumed == [batch.pk] and enqueued == [batch.pk]
    batch = replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)  # the new task
    assert (batch.status, batch.done, batch.failed) == ("done", 4, 0)
    assert [item["run"] for item in batch.summary["items"]] == [r.pk for r in originals]
    for original in originals:
        [replay] = replays_of(original)
        assert drive(replay).status == "succeeded"
    assert {i["replay"] for i in batch.summary["items"]} == {
        r.pk for r in Run.objects.filter(origin="replay")
    }


def test_a_batch_with_a_fresh_heartbeat_is_left_alone(db, enqueued):
    originals = failed_runs("fresh", 2)
    now = timezone.now()
    running = bulk(originals[:1])
    ReplayBatch.objects.filter(pk=running.pk).update(
        status="running", heartbeat_at=now - timedelta(seconds=30)
    )
    just_made = bulk(originals[1:])  # pending, its task not started yet: created_at is now
    finished = bulk(originals[:1])
    ReplayBatch.objects.filter(pk=finished.pk).update(
        status="done", heartbeat_at=now - timedelta(hours=1)
    )
    enqueued.clear()

    assert replays.resume_stranded_batches(now=now) == []

    assert enqueued == []
    running.refresh_from_db()
    assert running.heartbeat_at == now - timedelta(seconds=30)
    assert ReplayBatch.objects.get(pk=just_made.pk).status == "pending"


def test_a_batch_whose_task_never_started_is_resumed_from_its_creation_time(db, enqueued):
    [original] = failed_runs("lost-task", 1)
    batch = bulk([original])
    now = timezone.now()
    ReplayBatch.objects.filter(pk=batch.pk).update(created_at=now - timedelta(minutes=3))
    enqueued.clear()

    assert replays.resume_stranded_batches(now=now) == [batch.pk]
    assert enqueued == [batch.pk]

    batch = replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)
    assert batch.status == "done" and len(replays_of(original)) == 1


def test_a_stranded_batch_is_claimed_by_one_sweep_only(db, enqueued, settings):
    settings.SIGNALBOX = {**settings.SIGNALBOX, "REPLAY_BATCH_STALE_SECONDS": 10}
    [original] = failed_runs("claimed", 1)
    batch = bulk([original])
    now = timezone.now()
    ReplayBatch.objects.filter(pk=batch.pk).update(
        status="running", heartbeat_at=now - timedelta(seconds=11)
    )
    enqueued.clear()

    first = replays.resume_stranded_batches(now=now)
    second = replays.resume_stranded_batches(now=now)  # another scheduler, same moment

    assert (first, second) == ([batch.pk], [])
    assert enqueued == [batch.pk]
    assert ReplayBatch.objects.get(pk=batch.pk).heartbeat_at == now


def test_processing_renews_the_heartbeat_with_every_item(db):
    originals = failed_runs("beating", 3)
    batch = bulk(originals)
    beats = []

    def sleep(_seconds: float) -> None:
        beats.append(ReplayBatch.objects.get(pk=batch.pk).heartbeat_at)

    before = timezone.now()
    done = replays.process_batch(batch_id=batch.pk, sleep=sleep, clock=fixed_clock)

    assert len(beats) == 2 and all(b is not None and b >= before for b in beats)
    assert beats[0] < beats[1] <= done.heartbeat_at


def test_a_run_the_batch_already_started_is_recorded_and_not_replayed_again(db):
    originals = failed_runs("recorded", 2)
    batch = bulk(originals)
    # The replay of the first run exists, made by this batch, but the batch's progress does
    # not say so (as if the two had not committed together).
    early = replays.replay_run(run_id=originals[0].pk, actor="alice", batch_id=batch.pk)

    batch = replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)

    assert (batch.done, batch.failed) == (2, 0)
    assert batch.summary["items"][0] == {"run": originals[0].pk, "replay": early.pk}
    assert [len(replays_of(r)) for r in originals] == [1, 1]
    journal = early.journal.get(kind="run.replay_of")
    assert journal.data["batch"] == batch.pk


def test_a_replay_of_the_same_run_by_someone_else_does_not_count_as_the_batchs(db):
    [original] = failed_runs("by-hand", 1)
    batch = bulk([original])
    by_hand = replays.replay_run(run_id=original.pk, actor="bob")

    batch = replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)

    [item] = batch.summary["items"]
    assert item["replay"] != by_hand.pk
    assert len(replays_of(original)) == 2


def test_an_earlier_delivery_stops_when_a_later_one_took_the_batch_over(db):
    originals = failed_runs("taken-over", 3)
    batch = bulk(originals)

    def another_delivery_starts(_seconds: float) -> None:
        found = ReplayBatch.objects.get(pk=batch.pk)
        found.summary = {**found.summary, "driver": "the-resumed-task"}
        found.save(update_fields=["summary"])

    stopped = replays.process_batch(
        batch_id=batch.pk, sleep=another_delivery_starts, clock=fixed_clock
    )

    assert (stopped.status, stopped.done) == ("running", 1)
    assert Run.objects.filter(origin="replay").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_scheduler_resumes_a_stranded_batch_and_a_worker_finishes_it(stack):
    # Failed runs written directly: nothing for the stack to pick up until the batch is.
    version = publish("e2e-stranded", definition(log_step("boom", message="fixed")))
    originals = []
    for _ in range(3):
        run = Run.objects.create(workflow=version.workflow, version=version, status="failed")
        StepRun.objects.create(run=run, step_id="boom", kind="log", status="failed", error="x")
        originals.append(run)
    # The first item was committed (its replay goes to the stack's worker) before this
    # batch's worker died, five minutes ago. Not start_bulk_replay: its task would start.
    first = replays.replay_run(run_id=originals[0].pk, actor="alice")
    batch = ReplayBatch.objects.create(
        kind="replay",
        selection={"run_ids": [r.pk for r in originals]},
        options={"per_second": 50, "version": "original", "from_step": "failed"},
        total=3,
        done=1,
        status="running",
        created_by="alice",
        summary={"items": [{"run": originals[0].pk, "replay": first.pk}], "driver": "dead"},
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )

    def finished():
        found = ReplayBatch.objects.get(pk=batch.pk)
        return found if found.status == "done" else None

    done = wait_until(finished, timeout=60, message="the scheduler to resume the batch")

    assert (done.done, done.failed) == (3, 0)
    assert [len(replays_of(r)) for r in originals] == [1, 1, 1]
    wait_until(
        lambda: all(replays_of(r)[0].status == "succeeded" for r in originals),
        timeout=60,
        message="the resumed replays to succeed",
    )


# --- batches respect team visibility -----------------------------------------------------------


def user_client(name: str, role: str, *teams: Group) -> Client:
    return sign_in(Client(), name, role, *teams)


@pytest.fixture
def team_batch(db):
    """A bulk replay over the finance team's workflow, and one over a workflow for all."""
    finance = Group.objects.create(name="finance")
    [payroll] = failed_runs("payroll", 1)
    Workflow.objects.filter(slug="payroll").update(team=finance)
    [shop] = failed_runs("shop", 1)
    return {
        "team": finance,
        "run": payroll,
        "batch": bulk([payroll]),
        "public": bulk([shop]),
    }


def test_a_batch_over_a_team_workflow_is_hidden_from_users_outside_the_team(team_batch):
    outsider = user_client("outsider", "operator")
    batch, public = team_batch["batch"], team_batch["public"]

    listed = outsider.get("/replays/").content.decode()
    page = outsider.get(f"/replays/{batch.pk}/")
    cancel = outsider.post(f"/replays/{batch.pk}/cancel/", {"reason": "not mine"})
    matching = outsider.get("/replays/", {"workflow": "payroll"}).content.decode()
    shadow = outsider.post("/replays/shadow/", {"workflow": "payroll", "last": "1"})
    panel = outsider.get(f"/runs/{team_batch['run'].pk}/recovery/")

    assert f'href="/replays/{batch.pk}/"' not in listed
    assert f'href="/replays/{public.pk}/"' in listed
    assert '<option value="payroll"' not in listed
    assert page.status_code == 404 and cancel.status_code == 404
    assert ReplayBatch.objects.get(pk=batch.pk).status == "pending"
    assert "<strong>0</strong> failed run(s) match" in matching
    assert shadow.status_code == 404 and not ReplayBatch.objects.filter(kind="shadow").exists()
    assert panel.status_code == 404


def test_a_team_member_and_an_admin_see_the_teams_batch(team_batch):
    member = user_client("member", "viewer", team_batch["team"])
    admin = user_client("boss", "admin")
    batch = team_batch["batch"]

    for client in (member, admin):
        assert f'href="/replays/{batch.pk}/"' in client.get("/replays/").content.decode()
        page = client.get(f"/replays/{batch.pk}/")
        assert page.status_code == 200 and 'id="batch-progress"' in page.content.decode()
    matching = member.get("/replays/", {"workflow": "payroll"}).content.decode()
    assert "<strong>1</strong> failed run(s) match" in matching


def test_a_page_of_batches_is_filled_past_the_ones_the_user_may_not_see(team_batch):
    from workflows.recovery import selectors as recovery

    hidden = frozenset({team_batch["run"].workflow_id})
    more = [bulk([team_batch["run"]]) for _ in range(3)]  # newest, all the team's

    shown = recovery.batches(limit=1, hidden=hidden)

    assert [b.pk for b in shown] == [team_batch["public"].pk]
    assert recovery.batch(more[0].pk, hidden=hidden) is None
    assert recovery.batch(more[0].pk) == more[0]


@pytest.mark.django_db(transaction=True)
async def test_the_batch_socket_is_refused_to_users_outside_the_team():
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.db import connections

    from orchestrator.asgi import application

    def prepare():
        version = publish("ws-payroll", definition(log_step("only")))
        team = Group.objects.create(name="ws-finance")
        Workflow.objects.filter(pk=version.workflow_id).update(team=team)
        run = Run.objects.create(workflow=version.workflow, version=version, status="failed")
        # Written directly (no task): a stack in this session must not process it.
        batch = ReplayBatch.objects.create(
            kind="replay", selection={"run_ids": [run.pk]}, total=1, created_by="alice"
        )
        sessions = {}
        for name, groups in (("ws-outsider", ()), ("ws-member", (team,))):
            client = user_client(name, "viewer", *groups)
            sessions[name] = client.cookies["sessionid"].value
        return batch, sessions

    def socket(session: str):
        return WebsocketCommunicator(
            application,
            f"/ws/replays/{batch.pk}/",
            headers=[
                (b"cookie", f"sessionid={session}".encode()),
                (b"origin", b"http://127.0.0.1"),
            ],
        )

    try:
        batch, sessions = await sync_to_async(prepare)()
        outsider = socket(sessions["ws-outsider"])
        connected, code = await outsider.connect(timeout=10)
        assert not connected and code == 4404
        member = socket(sessions["ws-member"])
        connected, _ = await member.connect(timeout=10)
        assert connected
        assert 'id="batch-progress"' in await member.receive_from(timeout=10)
        await member.disconnect()
    finally:
        await sync_to_async(connections.close_all)()


# --- shadow runs stay out of ordinary run lists ------------------------------------------------


def token_client(role: str = "viewer") -> Client:
    _token, plaintext = create_api_token(name=f"{role}-shadow-token", role=role)
    return Client(headers={"Authorization": f"Bearer {plaintext}"})


@pytest.fixture
def shadowed(db):
    """A workflow's triggered run, and a shadow run of its draft over the same event."""
    body = definition(log_step("greet"))
    publish("greeter", body)
    original = drive(trigger("greeter", {"order": 1}))
    put_workflow(slug="greeter", raw=definition(log_step("greet", message="hi")))
    batch = replays.start_shadow(workflow_slug="greeter", last=1, actor="alice")
    replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)
    shadow = drive(Run.objects.get(origin="shadow"))
    assert original.status == shadow.status == "succeeded"
    return {"original": original, "shadow": shadow, "batch": batch}


def test_the_runs_api_leaves_shadow_runs_out_unless_asked_for_them(shadowed):
    api = token_client()
    original, shadow = shadowed["original"], shadowed["shadow"]

    listed = api.get("/api/v1/runs").json()["runs"]
    asked = api.get("/api/v1/runs", {"origin": "shadow"}).json()["runs"]
    triggered = api.get("/api/v1/runs", {"origin": "trigger", "workflow": "greeter"}).json()
    unknown = api.get("/api/v1/runs", {"origin": "sideways"})

    assert [r["id"] for r in listed] == [original.pk]
    assert listed[0]["origin"] == "trigger" and listed[0]["replay_of"] is None
    assert [(r["id"], r["origin"], r["replay_of"]) for r in asked] == [
        (shadow.pk, "shadow", original.pk)
    ]
    assert [r["id"] for r in triggered["runs"]] == [original.pk]
    assert unknown.status_code == 400
    assert unknown["Content-Type"].startswith("application/problem+json")
    assert unknown.json()["type"] == PROBLEM_TYPES + "invalid-query"
    assert api.get(f"/api/v1/runs/{shadow.pk}").json()["origin"] == "shadow"
    event = api.get(f"/api/v1/events/{original.event_id}").json()
    assert [r["id"] for r in event["runs"]] == [original.pk]


def test_the_next_page_of_runs_keeps_the_origin_filter(shadowed):
    api = token_client()
    replays.start_shadow(workflow_slug="greeter", last=1, actor="alice")
    batch = ReplayBatch.objects.order_by("-id").first()
    replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)

    first = api.get("/api/v1/runs", {"origin": "shadow", "limit": 1}).json()
    second = api.get("/api/v1/runs" + first["next"]).json()

    assert "origin=shadow" in first["next"]
    ids = [r["id"] for r in first["runs"] + second["runs"]]
    assert set(ids) == set(Run.objects.filter(origin="shadow").values_list("pk", flat=True))
    assert len(ids) == 2


def test_the_runs_page_and_the_event_pages_leave_shadow_runs_out(shadowed):
    viewer = user_client("viewer-1", "viewer")
    original, shadow = shadowed["original"], shadowed["shadow"]

    runs = viewer.get("/runs/").content.decode()
    run_page = viewer.get(f"/runs/{original.pk}/").content.decode()
    event_page = viewer.get(f"/events/{original.event_id}/").content.decode()
    lineage = viewer.get(f"/events/{original.event_id}/lineage/").content.decode()

    assert f'id="run-{original.pk}"' in runs and f'id="run-{shadow.pk}"' not in runs
    assert f'href="/runs/{shadow.pk}/"' not in run_page
    assert f'href="/runs/{shadow.pk}/"' not in event_page
    assert f'data-key="run-{original.pk}"' in lineage
    assert f'data-key="run-{shadow.pk}"' not in lineage
    assert [r.pk for r in selectors.runs(workflow_slug="greeter")] == [original.pk]


def test_a_shadow_run_stays_reachable_from_its_batch(shadowed):
    viewer = user_client("viewer-2", "viewer")
    shadow = shadowed["shadow"]

    batch_page = viewer.get(f"/replays/{shadowed['batch'].pk}/").content.decode()

    assert f'href="/runs/{shadow.pk}/"' in batch_page
    assert viewer.get(f"/runs/{shadow.pk}/").status_code == 200


def test_the_overview_leaves_shadow_steps_out_of_latency(shadowed):
    # The shadow's step "took" ten minutes: counted, it would be the window's p95.
    step = StepRun.objects.get(run=shadowed["shadow"])
    StepRun.objects.filter(pk=step.pk).update(started_at=step.finished_at - timedelta(minutes=10))

    figures = metrics.compute_overview("15m").figures

    assert figures["steps_finished"] == 1
    assert figures["runs_started"] == 1
    assert figures["latency_p95_ms"] < 60_000


def test_a_running_shadow_run_takes_no_slot_from_real_runs(db):
    body = definition(log_step("only"))
    body["concurrency"] = {"max_runs": 1}
    publish("one-at-a-time", body)
    drive(trigger("one-at-a-time", {"order": 1}))
    put_workflow(slug="one-at-a-time", raw=body)
    batch = replays.start_shadow(workflow_slug="one-at-a-time", last=1, actor="alice")
    with in_this_process():
        replays.process_batch(batch_id=batch.pk, sleep=lambda _s: None)
    assert Run.objects.get(origin="shadow").status == "running"  # not driven: still going

    real = trigger("one-at-a-time", {"order": 2})

    assert real.status == "running"


# --- the API's page parameters ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/dead-letters", "/api/v1/audit"])
@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=abc", "before_id=x", "before_id=0", "limit=-1"]
)
def test_a_bad_page_of_a_recovery_list_is_one_problem(db, path, query):
    response = token_client().get(f"{path}?{query}")

    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/problem+json")
    assert response.json() == {
        "type": PROBLEM_TYPES + "invalid-query",
        "title": "Invalid query",
        "status": 400,
        "detail": "before_id and limit are positive integers",
    }


def test_the_recovery_lists_page_with_before_id_and_limit(db):
    from workflows.access import audit

    for n in range(3):
        audit.record(actor="alice", action="run.cancel", target_type="run", target_id=n)
    api = token_client()

    first = api.get("/api/v1/audit", {"limit": 2}).json()
    second = api.get("/api/v1/audit", {"limit": 2, "before_id": first["next_before_id"]}).json()

    assert [e["target_id"] for e in first["entries"] + second["entries"]] == ["2", "1", "0"]
    assert "next_before_id" not in second


def test_the_runs_api_reads_a_large_limit_as_its_maximum_and_refuses_a_huge_cursor(db):
    api = token_client()

    large = api.get("/api/v1/runs", {"limit": "100000"})
    huge = api.get("/api/v1/runs", {"before": "9" * 30})

    assert large.status_code == 200
    assert huge.status_code == 400
    assert huge.json()["detail"] == "before and limit are positive integers"
