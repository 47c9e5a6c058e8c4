"""The live run list through the real web server (uvicorn, orchestrator/servers.py): frames
the Hub writes to sockets as encoded bytes (dashboard/live/frame_writer.py) arrive whole, also
on a socket that asked for permessage-deflate, as every browser does (the server declines
it)."""

from __future__ import annotations

import asyncio
import re

from channels.db import database_sync_to_async
from websockets.asyncio.client import connect

from tests.factories import definition, log_step
from tests.runs_here import publish, trigger
from tests.test_dashboard_sockets import session_cookie
from workflows.live import notify
from workflows.runs.models import Run

TIMEOUT = 20


async def next_frame(ws, frames: list[str]) -> str:
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    frames.append(frame)
    await ws.send(f'{{"ack": {len(frames)}}}')
    return frame


async def test_sockets_with_and_without_deflate_asked_get_the_same_frames_from_the_server(
    stack, transactional_db
):
    cookie = (await database_sync_to_async(session_cookie)(role="viewer")).decode()
    await database_sync_to_async(publish)("orders", definition(log_step("received")))
    run = await database_sync_to_async(trigger)("orders")
    url = stack.base_url.replace("http://", "ws://") + "/ws/runs/?ack=1"
    headers = {"Cookie": cookie, "Origin": stack.base_url}

    async with (
        connect(url, additional_headers=headers, compression=None) as plain,
        connect(url, additional_headers=headers, compression="deflate") as browser_like,
    ):
        # Compressing is per socket; declined, every page can take the same bytes.
        assert plain.protocol.extensions == browser_like.protocol.extensions == []
        seen = {plain: [], browser_like: []}
        for ws in (plain, browser_like):
            assert f'id="run-{run.pk}"' in await next_frame(ws, seen[ws])

        # The run is running (its step queued): two changes, so that the second frame is
        # a difference from a frame that itself came through the Hub.
        for status in ("failed", "succeeded"):

            def change(status=status):
                Run.objects.filter(pk=run.pk).update(status=status)
                notify.run_changed(run_id=run.pk, seq=1, workflow_slug="orders", status=status)

            await database_sync_to_async(change)()
            for ws in (plain, browser_like):
                while f'data-status="{status}"' not in await next_frame(ws, seen[ws]):
                    pass

        assert seen[plain][1:] == seen[browser_like][1:]
        assert re.fullmatch(
            rf'<tbody><tr id="run-{run.pk}" data-status="succeeded".*</tr></tbody>',
            seen[plain][-1],
            re.S,
        )
