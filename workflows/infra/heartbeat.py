"""Long-running processes (bus consumer, scheduler) say they are alive through Redis keys."""

from __future__ import annotations

import time

from django.conf import settings

from workflows.infra.redis_client import client, key


def beat(component: str) -> None:
    client().set(
        key("heartbeat", component),
        str(time.time()),
        ex=settings.SIGNALBOX["HEARTBEAT_TTL_SECONDS"],
    )


def last_beat(component: str) -> float | None:
    value = client().get(key("heartbeat", component))
    return float(value) if value else None
