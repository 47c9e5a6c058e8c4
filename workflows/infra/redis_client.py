"""One Redis connection pool per process, and the key names Signalbox uses."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def client() -> redis.Redis:
    # A short socket timeout keeps web requests from hanging when Redis is down; blocking
    # reads (XREADGROUP) pass their own longer timeout.
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2, decode_responses=True
    )


def key(*parts: object) -> str:
    return ":".join([settings.REDIS_PREFIX, *map(str, parts)])
