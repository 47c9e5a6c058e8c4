"""Tell connected browsers that something changed, after the change is committed.

Messages are small hints ({"type": "run.changed", "run": id, "seq": n}); consumers re-read
the database, so a lost hint costs freshness, never correctness.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger("signalbox.notify")

RUNS_GROUP = "runs"


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


def run_changed(*, run_id: int, seq: int, workflow_slug: str, status: str) -> None:
    message = {
        "type": "run.changed",
        "run": run_id,
        "seq": seq,
        "workflow_slug": workflow_slug,
        "status": status,
    }
    transaction.on_commit(lambda: _send([RUNS_GROUP, run_group(run_id)], message))


EVENTS_GROUP = "events"


def event_ingested(*, event) -> None:
    """A new event is in the store (sent after its transaction commits). Carries what the
    live event flow filters on, so a socket can drop it without reading the database."""
    message = {
        "type": "event.ingested",
        "event": event.pk,
        "event_type": event.type,
        "source": event.source,
        "correlation": event.correlation_id,
        "channel": event.channel,
    }
    transaction.on_commit(lambda: _send([EVENTS_GROUP], message))


def replay_batch_group(batch_id: int) -> str:
    return f"replay-batch-{batch_id}"


def replay_batch_changed(*, batch_id: int, done: int, failed: int, status: str) -> None:
    message = {"type": "batch.changed", "batch": batch_id, "done": done, "failed": failed,
               "status": status}
    transaction.on_commit(lambda: _send([replay_batch_group(batch_id)], message))


def _send(groups: list[str], message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except Exception as exc:  # noqa: BLE001 - a missed hint must never fail the work itself
        log.warning("could not push %s: %s", message["type"], exc)
