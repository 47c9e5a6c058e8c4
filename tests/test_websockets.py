"""The live dashboard sockets, through the real ASGI application and the Redis channel layer."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections
from django.test import Client

from orchestrator.asgi import application
from tests.factories import definition, log_step
from tests.sockets import send_run_changed
from workflows.access.roles import ensure_groups
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow
from workflows.live import notify
from workflows.runs.models import Run

ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 10


@pytest.fixture(autouse=True)
async def close_socket_threads_connections():
    """Channels' auth middleware can leave a connection open in the worker thread that runs
    sync code for sockets; close it, or the test database cannot be dropped at the end."""
    yield
    await sync_to_async(connections.close_all)()


def session_cookie(*, role: str | None) -> bytes:
    ensure_groups()
    user = get_user_model().objects.create_user(f"user-{role}", password="not-used-here")
    if role:
        user.groups.add(Group.objects.get(name=role))
    browser = Client()
    browser.force_login(user)
    return f"sessionid={browser.cookies['sessionid'].value}".encode()


@pytest.fixture
def viewer(transactional_db) -> bytes:
    return session_cookie(role="viewer")


@pytest.fixture
def run(transactional_db) -> Run:
    put_workflow(slug="live", raw=definition(log_step("only")))
    version = publish_workflow(slug="live")
    return Run.objects.create(workflow=Workflow.objects.get(slug="live"), version=version)


def socket(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, headers=list(headers))


@asynccontextmanager
async def open_socket(path: str, cookie: bytes):
    """A socket connected with the session `cookie` from the dashboard's origin."""
    ws = socket(path, (b"cookie", cookie), ORIGIN)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    try:
        assert connected
        yield ws
    finally:
        await ws.disconnect()


async def set_status(run: Run, status: str) -> None:
    await database_sync_to_async(Run.objects.filter(pk=run.pk).update)(status=status)


async def test_a_viewer_gets_a_snapshot_of_the_run_list_on_connect(viewer, run):
    async with open_socket("/ws/runs/", viewer) as ws:
        snapshot = await ws.receive_from(timeout=TIMEOUT)
        assert 'id="run-rows"' in snapshot
        assert 'hx-swap-oob="outerHTML"' in snapshot
        assert f'id="run-{run.pk}"' in snapshot
        assert 'data-status="queued"' in snapshot


async def test_a_run_changed_message_leads_to_a_fresh_render_with_the_new_status(viewer, run):
    async with open_socket("/ws/runs/", viewer) as ws:
        assert 'data-status="queued"' in await ws.receive_from(timeout=TIMEOUT)

        await set_status(run, "succeeded")
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=2, status="succeeded", workflow="live"
        )

        # Only the row that changed (the snapshot had the whole page).
        fresh = await ws.receive_from(timeout=TIMEOUT)
        assert f'<tr id="run-{run.pk}" data-status="succeeded"' in fresh
        assert 'data-status="queued"' not in fresh


async def test_notify_after_commit_reaches_the_socket(viewer, run):
    async with open_socket("/ws/runs/", viewer) as ws:
        await ws.receive_from(timeout=TIMEOUT)

        def change():
            Run.objects.filter(pk=run.pk).update(status="failed")
            # Outside a transaction on_commit runs at once; this is the services' own path.
            notify.run_changed(run_id=run.pk, seq=3, workflow_slug="live", status="failed")

        await database_sync_to_async(change)()

        assert 'data-status="failed"' in await ws.receive_from(timeout=TIMEOUT)


async def test_a_burst_of_hints_without_a_change_sends_one_frame(viewer, run):
    async with open_socket("/ws/runs/", viewer) as ws:
        await ws.receive_from(timeout=TIMEOUT)
        await set_status(run, "running")
        for seq in range(20):
            await send_run_changed(
                notify.RUNS_GROUP, run=run.pk, seq=seq, status="running", workflow="live"
            )

        frame = await ws.receive_from(timeout=TIMEOUT)

        assert 'data-status="running"' in frame
        # Every later render shows the same rows: nothing more is sent.
        assert await ws.receive_nothing(timeout=1.0)


async def test_the_run_list_socket_ignores_other_workflows_when_filtered(viewer, run):
    async with open_socket("/ws/runs/?workflow=live", viewer) as ws:
        await ws.receive_from(timeout=TIMEOUT)
        await send_run_changed(
            notify.RUNS_GROUP, run=999, seq=1, status="running", workflow="elsewhere"
        )
        assert await ws.receive_nothing(timeout=1.0)

        await set_status(run, "succeeded")
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=2, status="succeeded", workflow="live"
        )
        assert 'data-status="succeeded"' in await ws.receive_from(timeout=TIMEOUT)


async def test_the_run_detail_socket_sends_the_detail_partial_and_updates(viewer, run):
    async with open_socket(f"/ws/runs/{run.pk}/", viewer) as ws:
        snapshot = await ws.receive_from(timeout=TIMEOUT)
        assert 'id="run-detail"' in snapshot
        assert f"Run #{run.pk}" in snapshot
        assert 'data-status="queued"' in snapshot

        await set_status(run, "failed")
        await send_run_changed(
            notify.run_group(run.pk), run=run.pk, seq=2, status="failed", workflow="live"
        )

        fresh = await ws.receive_from(timeout=TIMEOUT)
        assert 'id="run-detail"' in fresh and 'data-status="failed"' in fresh


async def test_the_detail_socket_of_a_missing_run_is_closed_with_4404(viewer):
    # As another team's run is: the close code must not tell the two apart.
    connected, code = await socket("/ws/runs/987654/", (b"cookie", viewer), ORIGIN).connect(
        timeout=TIMEOUT
    )

    assert (connected, code) == (False, 4404)


# --- who may connect ----------------------------------------------------------------------------
async def test_a_socket_without_a_session_is_closed_with_4401(transactional_db):
    ws = socket("/ws/runs/", ORIGIN)

    connected, code = await ws.connect(timeout=TIMEOUT)

    assert not connected
    assert code == 4401


async def test_a_socket_with_a_forged_session_is_closed_with_4401(transactional_db):
    ws = socket("/ws/runs/", (b"cookie", b"sessionid=forged0123456789abcdef"), ORIGIN)

    connected, code = await ws.connect(timeout=TIMEOUT)

    assert not connected
    assert code == 4401


async def test_a_user_without_a_role_is_closed_with_4403(transactional_db):
    cookie = await database_sync_to_async(session_cookie)(role=None)
    ws = socket("/ws/runs/", (b"cookie", cookie), ORIGIN)

    connected, code = await ws.connect(timeout=TIMEOUT)

    assert not connected
    assert code == 4403


@pytest.mark.parametrize(
    "origin",
    [b"http://evil.example", b"http://127.0.0.1.evil.example", b"null"],
)
async def test_a_foreign_origin_is_refused_even_with_a_session(viewer, origin):
    ws = socket("/ws/runs/", (b"cookie", viewer), (b"origin", origin))

    connected, _ = await ws.connect(timeout=TIMEOUT)

    assert not connected


async def test_a_socket_without_an_origin_is_refused(viewer):
    ws = socket("/ws/runs/", (b"cookie", viewer))

    connected, _ = await ws.connect(timeout=TIMEOUT)

    assert not connected


# --- how hints travel ---------------------------------------------------------------------------
async def test_a_hint_to_two_groups_reaches_each_channel_once_in_one_redis_round_trip(
    transactional_db, monkeypatch
):
    from channels import DEFAULT_CHANNEL_LAYER
    from channels.layers import channel_layers

    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    in_both, in_one = await layer.new_channel(), await layer.new_channel()
    general = "general-hints"  # not process-local: its own key
    for group, channel in (("hints-a", in_both), ("hints-b", in_both), ("hints-b", in_one)):
        await layer.group_add(group, channel)
    await layer.group_add("hints-a", general)
    hint = {"type": "run.changed", "run": 7, "seq": 3, "workflow_slug": "w", "status": None}
    await notify.group_send(layer, ["hints-a", "hints-b"], {"type": "warm.up"})  # loads it
    for channel in (in_both, in_one, general):
        assert (await asyncio.wait_for(layer.receive(channel), TIMEOUT))["type"] == "warm.up"
    connection = layer.connection(0)
    commands = []
    real = connection.execute_command

    async def counted(*args, **options):
        commands.append(args[0])
        return await real(*args, **options)

    monkeypatch.setattr(connection, "execute_command", counted)

    await notify.group_send(layer, ["hints-a", "hints-b"], hint)

    assert commands == ["EVALSHA"]
    for channel in (in_both, in_one, general):
        assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == hint
    # Once only: the next message in_both gets is the next one sent.
    await layer.send(in_both, {"type": "after"})
    assert (await asyncio.wait_for(layer.receive(in_both), TIMEOUT))["type"] == "after"
    for group, channel in (("hints-a", in_both), ("hints-b", in_both), ("hints-b", in_one)):
        await layer.group_discard(group, channel)
    await layer.group_discard("hints-a", general)
