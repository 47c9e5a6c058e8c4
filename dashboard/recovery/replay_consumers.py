"""Live progress of a bulk or shadow replay: the batch's counters as the task works through
it, and the outcomes of the runs it started as they finish. Pushed, never polled.

The batch's own hints come on its group (workflows/live/notify.py `replay_batch_changed`), which
the process's hub (dashboard/live/consumers.py) joins for the page; run hints come through
the same hub, filtered to the runs the batch started.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.template.loader import render_to_string

from dashboard.live.consumers import CLOSE_NOT_FOUND, PushConsumer
from workflows.access.roles import has_role
from workflows.live import notify
from workflows.recovery import selectors as recovery
from workflows.recovery.models import ReplayBatch


class ReplayBatchConsumer(PushConsumer):
    """/ws/replays/<batch id>/"""

    hint_types = ("batch.changed", "run.changed")

    def batch_id(self) -> int:
        return int(self.scope["url_route"]["kwargs"]["batch_id"])

    def authorize(self, user):
        # The Stop control is pushed with the progress, so it follows the batch's state.
        self.can_operate = has_role(user, "operator")
        # A batch over another team's workflow is not this user's to follow.
        found = ReplayBatch.objects.filter(pk=self.batch_id()).first()
        if found is None or recovery.foreign_batch_ids([found], self.hidden):
            return CLOSE_NOT_FOUND
        return None

    async def connect(self):
        self.runs: frozenset[int] = frozenset()
        await super().connect()

    def extra_groups(self):
        # Joined (through the Hub) before the snapshot is read, so no change falls between.
        return [notify.replay_batch_group(self.batch_id())]

    def concerns(self, message) -> bool:
        if message.get("type") == "batch.changed":
            return message.get("batch") == self.batch_id()
        return message.get("run") in self.runs

    async def render(self, *, snapshot, fresh_after):
        frame, runs = await database_sync_to_async(render_batch_progress)(
            self.batch_id(), can_operate=getattr(self, "can_operate", False)
        )
        self.runs = runs
        return frame


def render_batch_progress(
    batch_id: int, *, can_operate: bool = False
) -> tuple[str, frozenset[int]]:
    from dashboard.recovery.replay_views import batch_context

    batch = recovery.batch(batch_id)
    if batch is None:
        return (
            '<section id="batch-progress" data-status="gone">This batch no longer '
            "exists.</section>",
            frozenset(),
        )
    context = batch_context(batch)
    runs = frozenset(item["replay"] for item in context["items"] if item.get("replay"))
    frame = render_to_string(
        "dashboard/replay_batch_progress.html",
        {**context, "oob": True, "can_operate": can_operate},
    )
    return frame, runs
