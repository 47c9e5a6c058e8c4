"""The editor's WebSocket: /ws/workflows/<slug>/editor/.

Pushes small JSON frames that static/js/editor.js applies to the canvas:

    {"type": "runs", "runs": [{"id", "status", "origin", "version", "event", "created"}]}
        the workflow's latest runs: on connect and whenever one of them changes;
    {"type": "run", "id", "status", "error", "origin", "version",
     "steps": {"<step id>": {"status", "attempt", "port", "error"}}}
        the run the page watches, sent when it asks ({"watch": <run id>}) and on every change;
    {"type": "draft", "revision", "by", "at", "client"}
        the draft's revision: when anyone saves it (`client` names the page that saved, so
        a page can tell its own saves), and when the page asks ({"draft": <its revision>}),
        which it does on every (re)connect, so a save missed while away is still seen.

Same rules as the other dashboard sockets: a signed-in user with the viewer role (else
closed 4401/4403), who may see the workflow (a team's workflow: members and admins only;
anyone else, like a missing workflow, closed 4404);
the origin is checked by the ASGI stack (AllowedHostsOriginValidator). Group messages are
hints: each change re-reads the database, bursts are coalesced, and a reconnecting page gets
a fresh snapshot, so a lost hint costs freshness, never correctness.
"""

from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from workflows.access.roles import has_role
from workflows.authoring.drafts import may_view
from workflows.catalog.models import Workflow
from workflows.live import notify
from workflows.queries import runs as selectors
from workflows.runs.models import Run

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
# A missing workflow and another team's close alike (the page answers both with 404).
CLOSE_NOT_FOUND = 4404
COALESCE_SECONDS = 0.15
RECENT_RUNS = 15


class EditorConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.slug = self.scope["url_route"]["kwargs"]["slug"]
        refusal = await database_sync_to_async(self._refusal)(user)
        if refusal:
            await self.close(code=refusal)
            return
        self.watched: int | None = None
        self.runs_dirty = self.run_dirty = False
        self._flush: asyncio.Task | None = None
        # Joined before the snapshot is read, so no change falls between the two.
        await self.channel_layer.group_add(notify.RUNS_GROUP, self.channel_name)
        await self.channel_layer.group_add(notify.draft_group(self.workflow_id), self.channel_name)
        self.joined = True
        await self.accept()
        await self.send(text_data=json.dumps(await self._runs_frame()))

    def _refusal(self, user) -> int | None:
        if not has_role(user, "viewer"):
            return CLOSE_FORBIDDEN
        workflow = Workflow.objects.filter(slug=self.slug).first()
        self.workflow_id = workflow.pk if workflow is not None else None
        if workflow is None or not may_view(user, workflow):
            return CLOSE_NOT_FOUND
        return None

    async def disconnect(self, code):
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(notify.RUNS_GROUP, self.channel_name)
            await self.channel_layer.group_discard(
                notify.draft_group(self.workflow_id), self.channel_name
            )
        if getattr(self, "_flush", None):
            self._flush.cancel()

    async def receive(self, text_data=None, bytes_data=None):
        try:
            message = json.loads(text_data or "{}")
            if not isinstance(message, dict):
                return
            if "draft" in message and "watch" not in message:
                frame = await self._draft_frame()
                if frame is not None:
                    await self.send(text_data=json.dumps(frame))
                return
            run_id = int(message["watch"]) if message.get("watch") is not None else None
        except (ValueError, TypeError, KeyError):
            return
        self.watched = run_id
        if run_id is not None:
            frame = await self._run_frame(run_id)
            if frame is not None:
                await self.send(text_data=json.dumps(frame))

    async def run_changed(self, message):
        if message.get("workflow_slug") != self.slug:
            return
        self.runs_dirty = True
        if message.get("run") == self.watched:
            self.run_dirty = True
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._send_later())

    async def draft_changed(self, message):
        if message.get("workflow") != self.workflow_id:
            return
        frame = {
            "type": "draft",
            "revision": message.get("revision"),
            "by": message.get("by", ""),
            "at": message.get("at", ""),
            "client": message.get("client", ""),
        }
        await self.send(text_data=json.dumps(frame))

    @database_sync_to_async
    def _draft_frame(self) -> dict | None:
        workflow = (
            Workflow.objects.filter(pk=self.workflow_id)
            .only("draft_revision", "draft_updated_by", "updated_at")
            .first()
        )
        if workflow is None:
            return None
        return {
            "type": "draft",
            "revision": workflow.draft_revision,
            "by": workflow.draft_updated_by,
            "at": workflow.updated_at.isoformat(),
            "client": "",
        }

    async def _send_later(self):
        await asyncio.sleep(COALESCE_SECONDS)
        if self.run_dirty and self.watched is not None:
            self.run_dirty = False
            frame = await self._run_frame(self.watched)
            if frame is not None:
                await self.send(text_data=json.dumps(frame))
        if self.runs_dirty:
            self.runs_dirty = False
            await self.send(text_data=json.dumps(await self._runs_frame()))

    @database_sync_to_async
    def _runs_frame(self) -> dict:
        runs = selectors.runs(workflow_slug=self.slug, limit=RECENT_RUNS)
        return {
            "type": "runs",
            "runs": [
                {
                    "id": r.pk,
                    "status": r.status,
                    "origin": r.origin,
                    "version": r.version.number,
                    "event": r.event_id,
                    "created": r.created_at.isoformat(),
                }
                for r in runs
            ],
        }

    @database_sync_to_async
    def _run_frame(self, run_id: int) -> dict | None:
        run = (
            Run.objects.select_related("version", "workflow")
            .filter(pk=run_id, workflow__slug=self.slug)
            .first()
        )
        if run is None:
            return None
        return {
            "type": "run",
            "id": run.pk,
            "status": run.status,
            "error": run.error,
            "origin": run.origin,
            "version": run.version.number,
            "steps": {
                s.step_id: {
                    "status": s.status,
                    "attempt": s.attempt,
                    "port": s.port,
                    "error": s.error[:500],
                }
                for s in selectors.latest_attempts(run)
            },
        }
