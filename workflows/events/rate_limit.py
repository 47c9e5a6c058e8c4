"""Per-token ingest rate limits, shared by every web process through Redis.

One GCRA ("generic cell rate algorithm", a token bucket kept as a single timestamp) per API
token: it refills at SIGNALBOX["INGEST_RATE_PER_TOKEN"] events per second up to a burst of
SIGNALBOX["INGEST_BURST_PER_TOKEN"] events. A request costs one per event it carries (a
batch of 100 costs 100) and is decided in one Lua round trip, with Redis's clock, so all
processes share one bucket. A refused request changes nothing and stores nothing; the
caller answers 429 with Retry-After. A busy token's process takes a short lease of events
at once (LEASE_SECONDS), so most requests are decided without a round trip.

The limiter protects the service, it is not what makes ingest correct: when Redis cannot
be reached it lets requests through (for a few seconds, without asking again), so an
outage of the transport never refuses events the database could still accept.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass

import redis
import redis.asyncio
from django.conf import settings

from workflows.infra.redis_client import client, key

log = logging.getLogger("signalbox.ingest")

# KEYS[1]: the token's theoretical arrival time (ms). ARGV: milliseconds per event, the
# burst in milliseconds (burst x interval), the request's cost, the events wanted (cost
# plus a lease for this process). Grants between cost and wanted events and returns how
# many; refuses with minus the milliseconds until `cost` would fit.
GCRA = """
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, wanted = tonumber(ARGV[3]), tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + clock[2] / 1000
local theoretical = tonumber(redis.call('GET', KEYS[1]) or now)
if theoretical < now then theoretical = now end
local room = math.floor((now + tolerance - theoretical) / interval + 1e-9)
if room < cost then
  return -math.max(1, math.ceil(theoretical + cost * interval - tolerance - now))
end
local granted = math.min(wanted, room)
local after = theoretical + granted * interval
redis.call('SET', KEYS[1], tostring(after), 'PX', math.ceil(after - now) + 1000)
return granted
"""
# A process takes this many seconds' worth of its token's rate at once and spends it
# locally, so a busy token costs one Redis round trip per lease, not per request. Leases
# are taken from the shared bucket first: they can refuse a little early, never admit more
# than the rate. A lease left unspent this long is dropped.
LEASE_SECONDS = 0.05
LEASE_LIFETIME_SECONDS = 1.0
# Set in the ASGI scope of a request whose events the fast path has counted.
CHECKED = "signalbox.rate_limit_checked"
# After a Redis error, requests pass unchecked this long before Redis is asked again.
OPEN_AFTER_ERROR_SECONDS = 5.0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds, for the Retry-After header


ALLOWED = Verdict(True)
_unchecked_until = 0.0
_async_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Lease:
    remaining: int
    until: float


_leases: dict[int, _Lease] = {}
_leases_lock = threading.Lock()


def _spend_leased(token_id: int, cost: int) -> bool:
    with _leases_lock:
        lease = _leases.get(token_id)
        if lease is None or lease.remaining < cost or time.monotonic() >= lease.until:
            return False
        lease.remaining -= cost
        return True


def _arguments(token_id: int, cost: int) -> tuple[list[str], list[float]] | None:
    """The script's keys and arguments, or None when the request needs no round trip
    (limits off, Redis failing, or this process still holds a lease that covers it)."""
    limits = settings.SIGNALBOX
    rate, burst = limits["INGEST_RATE_PER_TOKEN"], limits["INGEST_BURST_PER_TOKEN"]
    if rate <= 0 or time.monotonic() < _unchecked_until:
        return None
    # A full bucket lets any one request through, however large its batch.
    cost = max(1, min(cost, burst))
    if _spend_leased(token_id, cost):
        return None
    interval = 1000.0 / rate
    wanted = min(burst, cost + int(rate * LEASE_SECONDS))
    return [key("ratelimit", "ingest", token_id)], [interval, burst * interval, cost, wanted]


def _verdict(token_id: int, arguments, answer: int) -> Verdict:
    answer = int(answer)
    if answer < 0:
        return Verdict(False, retry_after=max(1, math.ceil(-answer / 1000)))
    cost = int(arguments[1][2])
    if answer > cost:
        with _leases_lock:
            _leases[token_id] = _Lease(answer - cost, time.monotonic() + LEASE_LIFETIME_SECONDS)
    return ALLOWED


def _failed_open(exc: Exception) -> Verdict:
    global _unchecked_until
    _unchecked_until = time.monotonic() + OPEN_AFTER_ERROR_SECONDS
    log.warning("rate limits not checked for %ss, Redis failed: %s", OPEN_AFTER_ERROR_SECONDS, exc)
    return ALLOWED


def check(*, token_id: int, cost: int) -> Verdict:
    """May this token store `cost` more events now? (Django's view.)"""
    arguments = _arguments(token_id, cost)
    if arguments is None:
        return ALLOWED
    try:
        answer = _sync_script()(keys=arguments[0], args=arguments[1])
    except redis.RedisError as exc:
        return _failed_open(exc)
    return _verdict(token_id, arguments, answer)


async def acheck(*, token_id: int, cost: int) -> Verdict:
    """The same decision, on the event loop (the ASGI fast path)."""
    arguments = _arguments(token_id, cost)
    if arguments is None:
        return ALLOWED
    try:
        answer = await _async_script()(keys=arguments[0], args=arguments[1])
    except redis.RedisError as exc:
        return _failed_open(exc)
    return _verdict(token_id, arguments, answer)


_sync = None


def _sync_script():
    global _sync
    if _sync is None:
        _sync = client().register_script(GCRA)
    return _sync


def _async_script():
    """One asyncio client per event loop: its connections belong to that loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    script = _async_scripts.get(loop)
    if script is None:
        connection = redis.asyncio.Redis.from_url(
            settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
        )
        script = _async_scripts[loop] = connection.register_script(GCRA)
    return script
