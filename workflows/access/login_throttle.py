"""Sign-in throttling: failed passwords counted per account and per client address in Redis.

Counters live in Redis (INCR, expiring with the window) rather than in a library with its
own tables (django-axes): they are shared by every web process, cost one round trip, write
nothing to PostgreSQL on the login path, and vanish on their own. A locked account or
address is refused even with the right password until the window that locked it ends.
A success clears the account's counter but not the address's, so an attacker who owns one
account cannot wipe the count of a password spray from the same address.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import redis
from django.conf import settings

from workflows.infra import redis_client

log = logging.getLogger("signalbox.login")


@dataclass(frozen=True)
class Limits:
    per_account: int
    per_address: int
    window_seconds: int


def limits() -> Limits:
    return Limits(
        per_account=settings.SIGNALBOX_LOGIN_FAILURES_PER_ACCOUNT,
        per_address=settings.SIGNALBOX_LOGIN_FAILURES_PER_ADDRESS,
        window_seconds=settings.SIGNALBOX_LOGIN_WINDOW_SECONDS,
    )


def _account_key(username: str) -> str:
    # Hashed: a Redis key holds no user-typed text (and no length surprises).
    digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return redis_client.key("login", "fail", "account", digest)


def _address_key(address: str) -> str:
    return redis_client.key("login", "fail", "address", address or "unknown")


def locked_for(*, username: str, address: str) -> int:
    """Seconds until this account or address may try again; 0 if it may try now."""
    limit = limits()
    keys = [(_account_key(username), limit.per_account), (_address_key(address), limit.per_address)]
    try:
        pipe = redis_client.client().pipeline(transaction=False)
        for key, _ in keys:
            pipe.get(key)
            pipe.ttl(key)
        answers = pipe.execute()
    except redis.RedisError:
        # Sign-in stays possible while Redis is away (the dashboard barely works without it
        # anyway); the gap is logged.
        log.warning("login throttle unavailable: Redis did not answer")
        return 0
    wait = 0
    for index, (_key, most) in enumerate(keys):
        count, ttl = answers[2 * index], answers[2 * index + 1]
        if count is not None and int(count) >= most:
            wait = max(wait, ttl if ttl and ttl > 0 else limit.window_seconds)
    return wait


def record_failure(*, username: str, address: str) -> None:
    window = limits().window_seconds
    try:
        pipe = redis_client.client().pipeline(transaction=False)
        for key in (_account_key(username), _address_key(address)):
            pipe.incr(key)
            # NX: the window starts at the first failure; later failures do not stretch it.
            pipe.expire(key, window, nx=True)
        pipe.execute()
    except redis.RedisError:
        log.warning("login throttle unavailable: a failed sign-in was not counted")


def clear_account(*, username: str) -> None:
    try:
        redis_client.client().delete(_account_key(username))
    except redis.RedisError:
        log.warning("login throttle unavailable: the account's failures were not cleared")
