"""The live run list through the real web server (uvicorn, orchestrator/servers.py): frames
the Hub writes to sockets as encoded bytes (dashboard/frame_writer.py) arrive as the same
text a socket with permessage-deflate gets through the server's own send."""

from __future__ import annotations

import asyncio
import re

from channels.db import database_sync_to_async
from websockets.asyncio.client import connect

from tests.factories import definition, log_step
from tests.test_dashboard_sockets import session_cookie
from tests.test_replay import publish, trigger
from workflows import notify
from workflows.models import Run

TIMEOUT = 20


async def next_frame(ws, frames: list[str]) -> str:
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    frames.append(frame)
    await ws.send(f'{{"ack": {len(frames)}}}')
    return frame


async def test_plain_and_compressed_sockets_get_the_same_frames_from_the_server(
    stack, transactional_db
):
    cookie = (await database_sync_to_async(session_cookie)(role="viewer")).decode()
    await database_sync_to_async(publish)("orders", definition(log_step("received")))
    run = await database_sync_to_async(trigger)("orders")
    url = stack.base_url.replace("http://", "ws://") + "/ws/runs/?ack=1"
    headers = {"Cookie": cookie, "Origin": stack.base_url}

    async with (
        connect(url, additional_headers=headers, compression=None) as plain,
        connect(url, additional_headers=headers) as deflated,
    ):
        assert plain.protocol.extensions == []
        assert deflated.protocol.extensions, "permessage-deflate was not negotiated"
        seen = {plain: [], deflated: []}
        for ws in (plain, deflated):
            assert f'id="run-{run.pk}"' in await next_frame(ws, seen[ws])

        # The run is running (its step queued): two changes, so that the second frame is
        # a difference from a frame that itself came through the Hub.
        for status in ("failed", "succeeded"):

            def change(status=status):
                Run.objects.filter(pk=run.pk).update(status=status)
                notify.run_changed(run_id=run.pk, seq=1, workflow_slug="orders", status=status)

            await database_sync_to_async(change)()
            for ws in (plain, deflated):
                while f'data-status="{status}"' not in await next_frame(ws, seen[ws]):
                    pass

        assert seen[plain][1:] == seen[deflated][1:]
        assert re.fullmatch(
            rf'<tbody><tr id="run-{run.pk}" data-status="succeeded".*</tr></tbody>',
            seen[plain][-1],
            re.S,
        )
