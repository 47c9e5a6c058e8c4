"""WebSocket consumers: push re-rendered partials that htmx swaps in place by id.

Group messages are hints ("run N changed"); each consumer re-reads the database and sends
what the page should show now. On connect a consumer sends a full snapshot, so a page that
reconnects after a drop catches up. Bursts are coalesced: at most one render per interval.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from workflows import notify, selectors
from workflows.roles import has_role

COALESCE_SECONDS = 0.2
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
        # Coalesce: many changes within the interval become one render of the current state.
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._render_later())

    async def _render_later(self):
        await asyncio.sleep(COALESCE_SECONDS)
        await self.send(text_data=await self.render())

    def group_names(self) -> list[str]:
        raise NotImplementedError

    def concerns(self, message) -> bool:
        return True

    async def render(self) -> str:
        raise NotImplementedError


class RunListConsumer(LiveConsumer):
    def group_names(self):
        return [notify.RUNS_GROUP]

    def concerns(self, message):
        slug = self.workflow_filter()
        return not slug or message.get("workflow_slug") == slug

    def workflow_filter(self) -> str:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        return (query.get("workflow") or [""])[0]

    @database_sync_to_async
    def render(self):
        runs = selectors.runs(workflow_slug=self.workflow_filter() or None)
        return render_to_string("dashboard/_run_rows.html", {"runs": runs, "oob": True})


class RunDetailConsumer(LiveConsumer):
    def group_names(self):
        return [notify.run_group(self.scope["url_route"]["kwargs"]["run_id"])]

    @database_sync_to_async
    def render(self):
        run = selectors.run_detail(self.scope["url_route"]["kwargs"]["run_id"])
        if run is None:
            return '<div id="run-detail" hx-swap-oob="true">This run no longer exists.</div>'
        return render_to_string(
            "dashboard/_run_detail.html",
            {"run": run, "steps": selectors.latest_attempts(run), "oob": True},
        )
