"""Helpers for the tests of the dashboard's sockets."""

from __future__ import annotations

from channels.layers import get_channel_layer


async def send_run_changed(group: str, *, run: int, seq: int, status: str, workflow: str) -> None:
    """The hint notify.run_changed sends after commit, sent now and to `group` alone."""
    await get_channel_layer().group_send(
        group,
        {
            "type": "run.changed",
            "run": run,
            "seq": seq,
            "workflow_slug": workflow,
            "status": status,
        },
    )
