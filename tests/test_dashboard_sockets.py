"""The live dashboard's sockets through the real ASGI application and the Redis channel
layer: who may subscribe to what, snapshots on (re)connect, the event flow (filters, folding,
pause, resume after a drop), lineage, overview, workers, flow control and shared renders."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections, transaction
from django.test import Client
from django.utils import timezone

from dashboard.live import consumers as live_consumers
from orchestrator.asgi import application
from tests.factories import cloudevent, definition, log_step
from tests.runs_here import drive, in_this_process, publish, trigger
from tests.sockets import send_run_changed
from workflows.access.roles import ensure_groups
from workflows.catalog.models import Workflow
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.live import notify
from workflows.runs.matching import ingest_event, match_event
from workflows.runs.models import Run

ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 10


@pytest.fixture(autouse=True)
async def close_socket_threads_connections():
    yield
    await sync_to_async(connections.close_all)()


def session_cookie(*, role: str | None, groups: tuple[str, ...] = ()) -> bytes:
    ensure_groups()
    user = get_user_model().objects.create_user(f"user-{role}-{'-'.join(groups)}", password="x")
    for name in ((role,) if role else ()) + groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    browser = Client()
    browser.force_login(user)
    return f"sessionid={browser.cookies['sessionid'].value}".encode()


@pytest.fixture
def viewer(transactional_db) -> bytes:
    return session_cookie(role="viewer")


def socket(path: str, cookie: bytes | None = None, origin=ORIGIN) -> WebsocketCommunicator:
    headers = [origin] if origin else []
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)


async def connected(path: str, cookie: bytes) -> tuple[WebsocketCommunicator, str]:
    ws = socket(path, cookie)
    ok, code = await ws.connect(timeout=TIMEOUT)
    assert ok, code
    snapshot = await ws.receive_from(timeout=TIMEOUT)
    ws.frames_seen = 1
    return ws, snapshot


async def frames_until(ws: WebsocketCommunicator, done, *, limit: int = 50) -> list[str]:
    """Frames until one satisfies `done`, acknowledging each as the page does."""
    frames = []
    for _ in range(limit):
        frames.append(await ws.receive_from(timeout=TIMEOUT))
        ws.frames_seen = getattr(ws, "frames_seen", 0) + 1
        await ws.send_to(text_data=json.dumps({"ack": ws.frames_seen}))
        if done(frames[-1]):
            return frames
    raise AssertionError(f"no frame matched in {limit}: {frames[-1][:300]}")


def match_here(*, event_id: int):
    """Match in this process, its steps left for `drive` rather than a stack's worker."""
    with in_this_process():
        return match_event(event_id=event_id)


def send_event(type_: str = "com.example.order.placed", **overrides) -> Event:
    # Kept off the bus (marked published, never sent): the tests match events themselves,
    # and a stack another test started must not match them first or add its run events.
    event, _ = ingest_event(envelope=from_structured(cloudevent(type_, **overrides)), publish=False)
    Event.objects.filter(pk=event.pk).update(published_at=timezone.now(), matched_at=timezone.now())
    return event


@pytest.fixture
def orders(transactional_db):
    publish("orders", definition(log_step("received")))
    return Workflow.objects.get(slug="orders")


@pytest.fixture
def secret_team(transactional_db):
    """A workflow only the finance team (and admins) may see, with one run."""
    publish("ledger", definition(log_step("book"), event="com.example.ledger"))
    Workflow.objects.filter(slug="ledger").update(team=Group.objects.create(name="finance"))
    return trigger("ledger", type_="com.example.ledger")


# --- who may connect ---------------------------------------------------------------------------
NEW_SOCKETS = [
    "/ws/overview/",
    "/ws/flow/",
    "/ws/lineage/1/",
    "/ws/system/",
    "/ws/runs/?status=failed",
]


@pytest.mark.parametrize("path", NEW_SOCKETS)
async def test_every_dashboard_socket_refuses_a_visitor_without_a_session(transactional_db, path):
    connected_, code = await socket(path).connect(timeout=TIMEOUT)

    assert not connected_
    assert code == live_consumers.CLOSE_UNAUTHENTICATED


@pytest.mark.parametrize("path", NEW_SOCKETS)
async def test_every_dashboard_socket_refuses_a_foreign_origin_even_with_a_session(viewer, path):
    ws = socket(path, viewer, origin=(b"origin", b"http://evil.example"))

    connected_, _ = await ws.connect(timeout=TIMEOUT)

    assert not connected_


async def test_a_user_without_a_role_is_refused_the_overview_with_4403(transactional_db):
    cookie = await database_sync_to_async(session_cookie)(role=None)

    connected_, code = await socket("/ws/overview/", cookie).connect(timeout=TIMEOUT)

    assert not connected_
    assert code == live_consumers.CLOSE_FORBIDDEN


async def test_following_another_teams_workflow_or_run_is_refused_with_4404_as_a_missing_one(
    viewer, secret_team
):
    for path in ("/ws/runs/?workflow=ledger", f"/ws/runs/{secret_team.pk}/", "/ws/runs/987654/"):
        connected_, code = await socket(path, viewer).connect(timeout=TIMEOUT)
        assert not connected_, path
        assert code == live_consumers.CLOSE_NOT_FOUND, path


async def test_a_team_member_may_follow_the_team_workflow(transactional_db, secret_team):
    member = await database_sync_to_async(session_cookie)(role="viewer", groups=("finance",))

    ws, snapshot = await connected(f"/ws/runs/{secret_team.pk}/", member)
    await ws.disconnect()

    assert f"Run #{secret_team.pk}" in snapshot


async def test_the_run_list_never_shows_or_wakes_up_for_another_teams_runs(
    viewer, secret_team, orders
):
    ws, snapshot = await connected("/ws/runs/", viewer)
    try:
        assert f'id="run-{secret_team.pk}"' not in snapshot
        await send_run_changed(
            notify.RUNS_GROUP, run=secret_team.pk, seq=9, status="failed", workflow="ledger"
        )
        assert await ws.receive_nothing(timeout=1.0)
    finally:
        await ws.disconnect()


# --- snapshots and reconnects --------------------------------------------------------------------
async def test_a_reconnecting_page_gets_a_snapshot_with_what_changed_while_it_was_away(
    viewer, orders
):
    run = await database_sync_to_async(trigger)("orders")
    ws, first = await connected("/ws/runs/?workflow=orders&ack=1", viewer)
    assert re.search(rf'id="run-{run.pk}" data-status="(queued|running)"', first)
    await ws.disconnect()

    await database_sync_to_async(drive)(run)  # succeeds while nobody listens (no hint seen)

    ws, again = await connected("/ws/runs/?workflow=orders&ack=1", viewer)
    await ws.disconnect()
    assert f'id="run-{run.pk}" data-status="succeeded"' in again
    assert 'id="run-pager"' in again


async def test_the_run_detail_socket_sends_graph_and_timeline_and_follows_the_run(viewer, orders):
    run = await database_sync_to_async(trigger)("orders")
    ws, snapshot = await connected(f"/ws/runs/{run.pk}/?ack=1", viewer)
    try:
        assert 'id="node-received" data-state="queued"' in snapshot
        await database_sync_to_async(drive)(run)  # its services send the hints

        frames = await frames_until(ws, lambda f: 'data-status="succeeded"' in f)
        assert 'id="node-received" data-state="succeeded"' in frames[-1]
        assert 'class="bar bar-running bar-status-succeeded"' in frames[-1]
    finally:
        await ws.disconnect()


# --- flow control and sharing ---------------------------------------------------------------------
async def test_a_page_that_does_not_acknowledge_gets_two_frames_then_the_latest_on_its_ack(
    viewer, orders
):
    run = await database_sync_to_async(trigger)("orders")
    ws, _snapshot = await connected("/ws/runs/?ack=1", viewer)

    async def change(status: str):
        await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(status=status)
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=1, status=status, workflow="orders"
        )

    try:
        await change("cancelled")
        assert 'data-status="cancelled"' in await ws.receive_from(timeout=TIMEOUT)
        # Two frames (snapshot + one) are unacknowledged now: changes pile up as one.
        for status in ("failed", "queued", "succeeded"):
            await change(status)
        assert await ws.receive_nothing(timeout=1.0)

        await ws.send_to(text_data=json.dumps({"ack": 2}))

        latest = await ws.receive_from(timeout=TIMEOUT)
        assert f'id="run-{run.pk}" data-status="succeeded"' in latest
        assert await ws.receive_nothing(timeout=0.5)
    finally:
        await ws.disconnect()


async def test_sockets_showing_the_same_page_share_one_render(viewer, orders, monkeypatch):
    renders = []
    real = live_consumers.render_run_rows

    def counted(query, hidden):
        renders.append(query)
        return real(query, hidden)

    monkeypatch.setattr(live_consumers, "render_run_rows", counted)
    sockets = [(await connected("/ws/runs/", viewer))[0] for _ in range(5)]
    try:
        before = len(renders)
        run = await database_sync_to_async(trigger)("orders")  # one hint to all five
        for ws in sockets:
            await frames_until(ws, lambda f, run=run: f'id="run-{run.pk}"' in f)
        assert len(renders) - before <= 2, len(renders) - before
    finally:
        for ws in sockets:
            await ws.disconnect()


async def test_a_render_after_the_database_dropped_the_render_threads_connection_still_comes(
    viewer, orders
):
    # The Hub's render thread keeps its connection between renders (hub.renderer): one the
    # database has closed meanwhile (a restart, an idle timeout) is replaced, not a lost frame.
    from dashboard.live import hub as live_hub

    run = await database_sync_to_async(trigger)("orders")
    ws, _snapshot = await connected("/ws/runs/?ack=1", viewer)
    try:
        kept = await asyncio.get_running_loop().run_in_executor(
            live_hub.renderer(), lambda: connections["default"].connection.info.backend_pid
        )

        def drop_it_and_change_the_run() -> None:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [kept])
            Run.objects.filter(pk=run.pk).update(status="failed")

        await database_sync_to_async(drop_it_and_change_the_run)()
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=1, status="failed", workflow="orders"
        )

        await frames_until(ws, lambda f: f'id="run-{run.pk}" data-status="failed"' in f)
    finally:
        await ws.disconnect()


async def test_a_status_change_reaches_every_page_as_one_small_frame_with_only_that_row(
    viewer, orders
):
    changed, other = [await database_sync_to_async(trigger)("orders") for _ in range(2)]
    pages = []
    for _ in range(3):
        ws, snapshot = await connected("/ws/runs/?ack=1", viewer)
        assert f'id="run-{other.pk}"' in snapshot and 'id="run-pager"' in snapshot
        pages.append(ws)
    try:
        await database_sync_to_async(Run.objects.filter(pk=changed.pk).update)(status="failed")
        await send_run_changed(
            notify.RUNS_GROUP, run=changed.pk, seq=1, status="failed", workflow="orders"
        )

        frames = [
            (await frames_until(ws, lambda f: 'data-status="failed"' in f))[-1] for ws in pages
        ]

        assert frames[0] == frames[1] == frames[2]
        assert re.fullmatch(
            rf'<tbody><tr id="run-{changed.pk}" data-status="failed".*</tr></tbody>',
            frames[0],
            re.S,
        )
        assert f'id="run-{other.pk}"' not in frames[0]
    finally:
        for ws in pages:
            await ws.disconnect()


async def test_an_idle_page_gets_its_frame_at_once_and_the_next_waits_its_interval(
    viewer, orders, monkeypatch
):
    # The run list's least gap between frames (RunListConsumer.interval), made so long that
    # a frame held by it could not come within the test: an idle page's first comes anyway.
    monkeypatch.setattr(live_consumers.RunListConsumer, "interval", 3600.0)
    run = await database_sync_to_async(trigger)("orders")
    ws, _snapshot = await connected("/ws/runs/?ack=1", viewer)

    async def moved(seq: int, status: str) -> None:
        await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(status=status)
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=seq, status=status, workflow="orders"
        )

    try:
        await moved(1, "failed")
        assert f'id="run-{run.pk}" data-status="failed"' in await ws.receive_from(timeout=TIMEOUT)
        # Acknowledged as the page does, so that flow control holds nothing back.
        await ws.send_to(text_data=json.dumps({"ack": 2}))

        await moved(2, "succeeded")

        assert await ws.receive_nothing(timeout=0.5)  # the second waits out the interval
    finally:
        await ws.disconnect()


async def wait_for(condition, what: str) -> None:
    """Wait on the test's own loop (the sockets run on it) until `condition()` holds."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_hints_that_arrive_while_a_render_is_in_flight_become_one_more_frame(
    viewer, orders, monkeypatch
):
    run = await database_sync_to_async(trigger)("orders")
    real = live_consumers.render_run_rows
    renders, hold, holding, release = [], [False], threading.Event(), threading.Event()

    def held(query, hidden):
        frame = real(query, hidden)
        if holding.is_set():
            renders.append(frame)
        # The first render that sees the run failed is done but not handed back yet: it is
        # in flight. (Renders for the trigger's own hints may come before it.)
        if hold[0] and 'data-status="failed"' in frame.full:
            hold[0] = False
            holding.set()
            release.wait(TIMEOUT)
        return frame

    monkeypatch.setattr(live_consumers, "render_run_rows", held)
    pages = [(await connected("/ws/runs/?ack=1", viewer))[0] for _ in range(3)]

    def set_status(status: str) -> None:
        Run.objects.filter(pk=run.pk).update(status=status)
        connections.close_all()  # this thread's own connection

    # Not the database thread: the held render occupies it.
    elsewhere = sync_to_async(set_status, thread_sensitive=False)
    try:
        hold[0] = True
        await elsewhere("failed")
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=1, status="failed", workflow="orders"
        )
        await wait_for(holding.is_set, "the render to be in flight")
        hub = live_consumers.hub()
        received = hub.received
        await elsewhere("succeeded")
        for seq in range(2, 12):
            await send_run_changed(
                notify.RUNS_GROUP, run=run.pk, seq=seq, status="succeeded", workflow="orders"
            )
        await wait_for(lambda: hub.received >= received + 10, "the hints to reach the hub")

        release.set()

        for ws in pages:
            frames = await frames_until(ws, lambda f: 'data-status="succeeded"' in f)
            # The render in flight (its older state), then one render for all ten hints.
            assert len(frames) == 2, [f[:120] for f in frames]
            assert f'id="run-{run.pk}" data-status="failed"' in frames[0]
            assert f'id="run-{run.pk}" data-status="succeeded"' in frames[1]
        assert len(renders) == 1, len(renders)  # after the one in flight
        for ws in pages:
            assert await ws.receive_nothing(timeout=0.5)
    finally:
        release.set()
        for ws in pages:
            await ws.disconnect()


async def test_a_hint_nobody_listens_for_wakes_no_socket(viewer, orders, monkeypatch):
    woken = []
    real = live_consumers.RunListConsumer.hint
    monkeypatch.setattr(
        live_consumers.RunListConsumer, "hint", lambda self, m: (woken.append(m), real(self, m))
    )
    ws, _snapshot = await connected("/ws/runs/", viewer)
    try:
        hub = live_consumers.hub()
        received = hub.received
        await get_channel_layer().group_send(
            notify.EVENTS_GROUP, {"type": "event.ingested", "event": 1, "workflow": None}
        )
        await wait_for(lambda: hub.received > received, "the hint to reach the hub")

        assert woken == []
    finally:
        await ws.disconnect()


# --- the live event flow ----------------------------------------------------------------
def row_ids(frame: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="flow-event-(\d+)"', frame)]


async def test_a_new_event_appears_in_the_flow_with_the_workflows_it_triggers(viewer, orders):
    ws, snapshot = await connected("/ws/flow/?ack=1", viewer)
    try:
        assert 'id="flow-rows"' in snapshot and 'hx-swap-oob="outerHTML"' in snapshot
        event = await database_sync_to_async(send_event)(subject="order-7", data={"order": 7})

        frame = (await frames_until(ws, lambda f: row_ids(f)))[-1]
        assert row_ids(frame) == [event.pk]
        assert 'hx-swap-oob="afterbegin"' in frame
        assert 'data-type="com.example.order.placed"' in frame and "order-7" in frame
        assert event.correlation_id[:10] in frame and "unvalidated" in frame
        assert "orders…" in frame  # subscribed; the run starts when the bus matches it

        await database_sync_to_async(match_here)(event_id=event.pk)
        cell = await frames_until(ws, lambda f: f'id="flow-runs-{event.pk}"' in f)
        assert re.search(r'class="run-tag status-\w+" data-run="\d+">orders #', cell[-1])
    finally:
        await ws.disconnect()


async def test_the_flow_filters_by_type_source_and_text(viewer, transactional_db):
    ws, _ = await connected("/ws/flow/?type=com.example.paid&source=/shop&q=gold", viewer)
    try:

        def send_all():
            send_event("com.example.paid", source="/shop", data={"tier": "silver"})
            send_event("com.example.other", source="/shop", data={"tier": "gold"})
            send_event("com.example.paid", source="/elsewhere", data={"tier": "gold"})
            return send_event("com.example.paid", source="/shop", data={"tier": "gold"})

        wanted = await database_sync_to_async(send_all)()

        frame = (await frames_until(ws, row_ids))[-1]
        assert row_ids(frame) == [wanted.pk]
    finally:
        await ws.disconnect()


async def test_a_burst_beyond_the_cap_is_folded_and_the_page_is_told_how_many(
    viewer, transactional_db
):
    ws, _ = await connected("/ws/flow/?ack=1", viewer)
    burst = live_consumers.FLOW_CAP * 3

    def send_burst():
        with transaction.atomic():  # the hints all arrive together, after the commit
            return [send_event(data={"n": n}).pk for n in range(burst)]

    try:
        ids = await database_sync_to_async(send_burst)()
        shown, folded, received = [], 0, 0
        while len(shown) + folded < burst:
            frame = await ws.receive_from(timeout=TIMEOUT)
            received += 1
            await ws.send_to(text_data=json.dumps({"ack": received + 1}))
            shown += row_ids(frame)
            folded += sum(int(n) for n in re.findall(r'data-folded="(\d+)"', frame))
            assert len(row_ids(frame)) <= live_consumers.FLOW_CAP

        assert folded > 0 and len(shown) + folded == burst
        assert set(shown) <= set(ids) and ids[-1] in shown  # the newest is never folded
        assert "folded" in frame and re.search(r'data-folded-total="(\d+)"', frame)
    finally:
        await ws.disconnect()


async def test_a_paused_flow_sends_no_rows_until_resumed_then_catches_up(viewer, transactional_db):
    ws, _ = await connected("/ws/flow/", viewer)
    try:
        await ws.send_to(text_data=json.dumps({"pause": True}))
        paused = await frames_until(ws, lambda f: 'data-paused="1"' in f)
        assert not row_ids(paused[-1])
        event = await database_sync_to_async(send_event)()
        while not await ws.receive_nothing(timeout=1.0):
            assert not row_ids(await ws.receive_from(timeout=TIMEOUT))

        await ws.send_to(text_data=json.dumps({"pause": False}))

        frame = (await frames_until(ws, row_ids))[-1]
        assert row_ids(frame) == [event.pk] and 'data-paused="0"' in frame
    finally:
        await ws.disconnect()


async def test_a_flow_page_that_reconnects_gets_the_events_it_missed(viewer, transactional_db):
    seen = await database_sync_to_async(send_event)()
    ws, snapshot = await connected("/ws/flow/", viewer)
    assert row_ids(snapshot) == [seen.pk]
    await ws.disconnect()

    missed = [await database_sync_to_async(send_event)() for _ in range(3)]

    ws, catch_up = await connected(f"/ws/flow/?after={seen.pk}", viewer)
    await ws.disconnect()
    assert row_ids(catch_up) == [e.pk for e in reversed(missed)]
    assert 'hx-swap-oob="afterbegin"' in catch_up  # added to the rows the page kept


# --- lineage, overview, workers -------------------------------------------------------------------
async def test_the_lineage_redraws_when_the_event_starts_a_run_and_the_run_moves(viewer, orders):
    event = await database_sync_to_async(send_event)()
    ws, snapshot = await connected(f"/ws/lineage/{event.pk}/?ack=1", viewer)
    try:
        assert f'id="lineage-node-event-{event.pk}"' in snapshot
        assert "lineage-node-run-" not in snapshot

        runs = await database_sync_to_async(match_here)(event_id=event.pk)
        frame = (await frames_until(ws, lambda f: "lineage-node-run-" in f))[-1]
        assert f'data-from="event-{event.pk}" data-to="run-{runs[0].pk}"' in frame

        await database_sync_to_async(drive)(runs[0])
        done = await frames_until(
            ws,
            lambda f: re.search(rf'lineage-node-run-{runs[0].pk}" [^>]*data-state="succeeded"', f),
        )
        assert "signalbox.run.succeeded" in done[-1]  # the run event it emitted
    finally:
        await ws.disconnect()


async def test_the_overview_socket_sends_figures_and_chart_data_then_updates(viewer, orders):
    ws, snapshot = await connected("/ws/overview/?window=1h&ack=1", viewer)
    try:
        data = json.loads(
            re.search(
                r'id="overview-data" type="application/json">(.*?)</script>', snapshot, re.S
            ).group(1)
        )
        assert data["window"] == "1h" and len(data["times"]) == 60
        assert set(data["runs_per_minute"]) == {"started", "succeeded", "failed"}

        await database_sync_to_async(drive)(await database_sync_to_async(trigger)("orders"))

        def counts_the_run(frame: str) -> bool:
            found = re.search(
                r'id="overview-data" type="application/json">(.*?)</script>', frame, re.S
            )
            figures = json.loads(found.group(1))["figures"] if found else {}
            return figures.get("runs_succeeded") == 1

        await frames_until(ws, counts_the_run)
    finally:
        await ws.disconnect()


async def test_the_workers_socket_sends_queues_partitions_and_circuits(viewer):
    ws, snapshot = await connected("/ws/system/", viewer)
    await ws.disconnect()

    assert 'id="system-panels" hx-swap-oob="outerHTML"' in snapshot
    assert 'data-queue="signalbox"' in snapshot and snapshot.count('data-partition="') == 4


async def test_a_run_that_starts_right_after_its_event_reaches_the_flow_row(viewer, orders):
    ws, _ = await connected("/ws/flow/?ack=1", viewer)
    try:

        def event_then_run():
            event = send_event(subject="order-8", data={"order": 8})
            match_here(event_id=event.pk)
            return event

        event = await database_sync_to_async(event_then_run)()

        await frames_until(
            ws, lambda f: re.search(rf'id="flow-runs-{event.pk}"[^>]*>.*?class="run-tag', f)
        )
    finally:
        await ws.disconnect()
