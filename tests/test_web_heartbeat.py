"""Web processes beat through the ASGI lifespan protocol
(workflows/operations/web_heartbeat.py); the workers page lists them. `manage.py status`
against real uvicorn processes is in tests/test_status_command.py."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.test_dashboard_pages import signed_in
from workflows.infra.redis_client import client, key
from workflows.operations import web_heartbeat


def names() -> set[str]:
    return {p["name"] for p in web_heartbeat.processes()}


async def lifespan(app, messages: asyncio.Queue, sent: list) -> None:
    async def receive():
        return await messages.get()

    async def send(message):
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)


def test_a_web_process_beats_from_startup_and_is_gone_at_shutdown():
    name = web_heartbeat.process_name()

    async def serve():
        messages, sent = asyncio.Queue(), []
        served = asyncio.create_task(lifespan(web_heartbeat.Lifespan(), messages, sent))
        await messages.put({"type": "lifespan.startup"})

        async def first_beat():
            while name not in await asyncio.to_thread(names):
                await asyncio.sleep(0.05)  # the first beat is written off the loop

        await asyncio.wait_for(first_beat(), 60)  # bounded: a missing beat fails, not hangs
        (process,) = [p for p in web_heartbeat.processes() if p["name"] == name]
        await messages.put({"type": "lifespan.shutdown"})
        await served
        return sent, process

    sent, process = asyncio.run(serve())

    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert process["pid"] == int(name.rsplit(":", 1)[1]) and process["uptime"] >= 0
    assert 0 <= process["seconds_ago"] < web_heartbeat.ttl()
    assert name not in names()
    assert client().get(key("heartbeat", "web", name)) is None


def test_a_process_whose_key_expired_drops_out_of_the_list():
    web_heartbeat.beat("gone-host:1", time.time())
    web_heartbeat.beat("live-host:2", time.time() - 60)
    client().delete(key("heartbeat", "web", "gone-host:1"))  # as the TTL would

    listed = {p["name"]: p for p in web_heartbeat.processes()}

    assert "gone-host:1" not in listed and listed["live-host:2"]["uptime"] >= 60
    assert "gone-host:1" not in client().smembers(key(*web_heartbeat.PROCESSES))
    web_heartbeat.forget("live-host:2")
    assert "live-host:2" not in names()


@pytest.mark.django_db
def test_the_workers_page_lists_the_web_processes_beating(client):
    from dashboard import metrics

    metrics.cache.clear()
    web_heartbeat.beat("page-host:7", time.time() - 30)
    try:
        html = signed_in(client, "viewer").get("/system/").content.decode()
    finally:
        web_heartbeat.forget("page-host:7")

    assert 'id="system-web"' in html and 'data-web="page-host:7"' in html
    row = html[html.index('data-web="page-host:7"') :]
    assert int(re.search(r"pid \d+, up (\d+) s", row[:400]).group(1)) >= 30
