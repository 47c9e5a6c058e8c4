"""The editor's socket: the workflow's runs, then the watched run's steps; strangers and
outsiders of a team refused.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.db import connections
from django.test import Client

from orchestrator.asgi import application
from tests.accounts import sign_in
from tests.factories import definition, log_step
from tests.sockets import send_run_changed
from workflows.authoring import drafts
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow
from workflows.live import notify
from workflows.runs.models import Run, StepRun

ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture(autouse=False)
async def close_socket_connections():
    yield
    await sync_to_async(connections.close_all)()


def session_cookie(username: str, *groups: str) -> bytes:
    browser = sign_in(Client(), username, *groups)
    return f"sessionid={browser.cookies['sessionid'].value}".encode()


@pytest.mark.django_db(transaction=True)
async def test_the_socket_sends_the_runs_then_the_watched_runs_steps(close_socket_connections):
    def setup():
        put_workflow(slug="live", raw=definition(log_step("a")))
        version = publish_workflow(slug="live")
        run = Run.objects.create(
            workflow=Workflow.objects.get(slug="live"), version=version, status="running"
        )
        StepRun.objects.create(run=run, step_id="a", kind="log", status="running")
        return run, session_cookie("vera", "viewer")

    run, cookie = await database_sync_to_async(setup)()
    ws = WebsocketCommunicator(
        application, "/ws/workflows/live/editor/", headers=[(b"cookie", cookie), ORIGIN]
    )
    connected, _ = await ws.connect(timeout=10)
    try:
        assert connected
        runs = await ws.receive_json_from(timeout=10)
        assert runs["type"] == "runs"
        assert [(r["id"], r["status"]) for r in runs["runs"]] == [(run.pk, "running")]

        await ws.send_json_to({"watch": run.pk})
        frame = await ws.receive_json_from(timeout=10)
        assert frame["type"] == "run"
        assert frame["steps"]["a"]["status"] == "running"

        await database_sync_to_async(StepRun.objects.filter(run=run).update)(status="succeeded")
        await send_run_changed(
            notify.RUNS_GROUP, run=run.pk, seq=2, status="running", workflow="live"
        )
        frame = await ws.receive_json_from(timeout=10)
        assert frame["type"] == "run"
        assert frame["steps"]["a"]["status"] == "succeeded"
    finally:
        await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_socket_refuses_strangers_and_outsiders_of_a_team(close_socket_connections):
    def setup():
        team = Group.objects.create(name="payments")
        drafts.create_workflow(slug="secret", name="", by="x", team=team)
        return session_cookie("olga", "viewer")

    cookie = await database_sync_to_async(setup)()
    anonymous = WebsocketCommunicator(application, "/ws/workflows/secret/editor/", headers=[ORIGIN])
    outsider = WebsocketCommunicator(
        application, "/ws/workflows/secret/editor/", headers=[(b"cookie", cookie), ORIGIN]
    )
    missing = WebsocketCommunicator(
        application, "/ws/workflows/nothing/editor/", headers=[(b"cookie", cookie), ORIGIN]
    )

    assert await anonymous.connect(timeout=10) == (False, 4401)
    # 4404 for another team's workflow, as for a missing one: 4403 would reveal it.
    assert await outsider.connect(timeout=10) == (False, 4404)
    assert await missing.connect(timeout=10) == (False, 4404)
