"""WebSocket consumers: push re-rendered partials that htmx swaps in place by id.

Group messages are hints ("run N changed"); each consumer re-reads the database and sends
what the page should show now. On connect a consumer sends a full snapshot, so a page that
reconnects after a drop catches up. Bursts are coalesced without a fixed window: an idle
socket renders at once, and changes that arrive while a render is in flight become one more
render of the latest state when it is done.
"""

from __future__ import annotations

import asyncio

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from workflows.access.roles import has_role

# Least gap between two renders of one busy socket.
COALESCE_SECONDS = 0.005
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class LiveConsumer(AsyncWebsocketConsumer):
    groups_to_join: list[str] = []

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(has_role)(user, "viewer"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self._flush: asyncio.Task | None = None
        self._dirty = False
        for group in self.group_names():
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send(text_data=await self.render())

    async def disconnect(self, code):
        for group in self.group_names():
            await self.channel_layer.group_discard(group, self.channel_name)
        if getattr(self, "_flush", None):
            self._flush.cancel()

    async def run_changed(self, message):
        if not self.concerns(message):
            return
        # Coalesce: changes during a render become one more render of the current state.
        self._dirty = True
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._render_while_dirty())

    async def _render_while_dirty(self):
        while self._dirty:
            self._dirty = False
            await self.send(text_data=await self.render())
            if self._dirty:
                await asyncio.sleep(COALESCE_SECONDS)

    def group_names(self) -> list[str]:
        raise NotImplementedError

    def concerns(self, message) -> bool:
        return True

    async def render(self) -> str:
        raise NotImplementedError


# The run list and run detail sockets live in live_consumers.py (filters, team permissions,
# one shared render per process, acknowledged frames); importable from here as before.
from dashboard.live.consumers import RunDetailConsumer, RunListConsumer  # noqa: E402

__all__ = ["LiveConsumer", "RunDetailConsumer", "RunListConsumer"]


CLOSE_NOT_FOUND = 4404


class NoSuchSocket(AsyncWebsocketConsumer):
    """Any other /ws/ path: refused with 4404. Without a route for it Channels raised
    ValueError, and the server answered the handshake with a 500."""

    async def connect(self):
        await self.close(code=CLOSE_NOT_FOUND)
