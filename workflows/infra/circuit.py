"""A circuit breaker per outbound host (host:port), shared by every worker through Redis.

CLOSED: requests go through. Failures (5xx, 429, network errors, timeouts) are counted; any
other outcome (a 2xx, 3xx or other 4xx answer: the host is up) resets the count. After
SIGNALBOX_CIRCUIT_FAILURES failures in a row the circuit OPENS: requests fail fast, without
calling the host, for SIGNALBOX_CIRCUIT_COOLDOWN seconds. Then it is HALF_OPEN: one trial
request (the probe) goes through while the others still fail fast; the probe's success
closes the circuit, its failure opens it for another cool-down.

Each host's state is one Redis hash, changed only by the Lua scripts below, which Redis runs
atomically: two workers cannot both take the probe or lose each other's failure counts. Time
comes from the caller's clock (`clock`), which keeps the scripts deterministic and the tests
free of sleeps; workers' clocks are assumed to agree to within a second or so.

If Redis cannot be reached the breaker lets requests through: it protects hosts from our
retries, and must not itself become a reason for steps to fail.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import redis
from django.conf import settings

from workflows.infra import redis_client

log = logging.getLogger("signalbox.circuit")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# A probe whose worker died must not hold the half-open slot for ever.
PROBE_GRACE_SECONDS = 5.0
# A host nobody called for this long is forgotten (an open circuit outlives its cool-down).
MIN_TTL_SECONDS = 7 * 24 * 3600

clock = time.time  # tests replace it

# Returns {verdict, seconds}: "pass" (closed), "probe" (the one trial), "open" (cooling
# down: seconds left) or "busy" (half-open, a probe is out: seconds until it may be retaken).
_ACQUIRE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'open' then return {'pass', '0'} end
local now = tonumber(ARGV[1])
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at')) or 0
local left = opened + tonumber(ARGV[2]) - now
if left > 0 then return {'open', tostring(left)} end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until')) or 0
if probe_until > now then return {'busy', tostring(probe_until - now)} end
redis.call('HSET', KEYS[1], 'probe', ARGV[4], 'probe_until', tostring(now + tonumber(ARGV[3])))
return {'probe', '0'}
"""

# ARGV: outcome (success | failure | release), now, threshold, token, error code, ttl.
# Returns the state after the outcome, or "opened"/"reopened" when this failure opened it.
_RECORD = """
local k = KEYS[1]
local outcome, now = ARGV[1], ARGV[2]
local state = redis.call('HGET', k, 'state') or 'closed'
local is_probe = ARGV[4] ~= '' and redis.call('HGET', k, 'probe') == ARGV[4]
if outcome == 'release' then
  if is_probe then redis.call('HDEL', k, 'probe', 'probe_until') end
  return state
end
if outcome == 'success' then
  -- While open, only the probe speaks for the host: a success from a request sent before
  -- the circuit opened says nothing about now.
  if state == 'open' and not is_probe then return state end
  redis.call('HDEL', k, 'probe', 'probe_until', 'opened_at')
  redis.call('HSET', k, 'state', 'closed', 'failures', '0', 'last_success_at', now)
  redis.call('EXPIRE', k, ARGV[6])
  return 'closed'
end
local failures = redis.call('HINCRBY', k, 'failures', 1)
redis.call('HSET', k, 'last_failure_at', now, 'last_error', ARGV[5])
if state == 'open' then
  if is_probe then
    redis.call('HSET', k, 'opened_at', now)
    redis.call('HDEL', k, 'probe', 'probe_until')
    state = 'reopened'
  end
elseif failures >= tonumber(ARGV[3]) then
  redis.call('HSET', k, 'state', 'open', 'opened_at', now)
  redis.call('HDEL', k, 'probe', 'probe_until')
  state = 'opened'
else
  redis.call('HSET', k, 'state', 'closed')
end
redis.call('EXPIRE', k, ARGV[6])
return state
"""


class CircuitOpen(Exception):
    """The host's circuit is open (or half-open with its one trial request out)."""

    def __init__(self, host: str, retry_after: float, *, half_open: bool):
        self.host, self.retry_after, self.half_open = host, retry_after, half_open
        if half_open:
            why = "half-open and its trial request is still out"
        else:
            why = f"open after {failure_threshold()} consecutive failures"
        super().__init__(
            f"circuit for {host} is {why}; not calling it (retry in {retry_after:.1f}s)"
        )


@dataclass(frozen=True)
class Permit:
    """Leave to send one request; hand it back with `succeeded`, `failed` or `release`."""

    host: str
    token: str = ""
    probe: bool = False


@dataclass(frozen=True)
class CircuitStatus:
    host: str
    state: str
    failures: int
    opened_at: float | None
    retry_in: float | None  # seconds of cool-down left while open
    last_error: str
    last_failure_at: float | None
    last_success_at: float | None

    def as_dict(self) -> dict:
        return {
            "host": self.host,
            "state": self.state,
            "failures": self.failures,
            "opened_at": _iso(self.opened_at),
            "retry_in": None if self.retry_in is None else round(self.retry_in, 3),
            "last_error": self.last_error,
            "last_failure_at": _iso(self.last_failure_at),
            "last_success_at": _iso(self.last_success_at),
        }


def failure_threshold() -> int:
    return max(1, int(getattr(settings, "SIGNALBOX_CIRCUIT_FAILURES", 5)))


def cooldown_seconds() -> float:
    return max(0.0, float(getattr(settings, "SIGNALBOX_CIRCUIT_COOLDOWN", 30.0)))


def host_of(url: str | httpx.URL) -> str:
    """The breaker's name for a URL's host: "host:port", the port made explicit."""
    parsed = httpx.URL(url) if isinstance(url, str) else url
    if not parsed.host:
        raise httpx.InvalidURL("the URL has no host")
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 0)
    host = parsed.host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _key(host: str) -> str:
    return redis_client.key("circuit", host)


@functools.cache
def _scripts():
    conn = redis_client.client()
    # Sent by SHA (EVALSHA); redis-py loads them again after a Redis restart forgot them.
    return conn.register_script(_ACQUIRE), conn.register_script(_RECORD)


def acquire(host: str, *, probe_seconds: float = 30.0) -> Permit:
    """Leave to call `host`, or CircuitOpen. `probe_seconds`: how long the request may take
    if it is the half-open trial (the slot is freed after that plus a grace, should the
    worker die without reporting)."""
    token = uuid.uuid4().hex
    try:
        verdict, seconds = _scripts()[0](
            keys=[_key(host)],
            args=[
                repr(clock()),
                repr(cooldown_seconds()),
                repr(probe_seconds + PROBE_GRACE_SECONDS),
                token,
            ],
        )
    except redis.RedisError as exc:
        log.warning("circuit for %s unknown, letting the request through: %s", host, exc)
        return Permit(host)
    if verdict == "pass":
        return Permit(host)
    if verdict == "probe":
        log.info("circuit for %s is half-open: sending one trial request", host)
        return Permit(host, token, probe=True)
    raise CircuitOpen(host, max(0.0, float(seconds)), half_open=verdict == "busy")


def _record(permit: Permit, outcome: str, code: str = "") -> str | None:
    try:
        state = _scripts()[1](
            keys=[_key(permit.host)],
            args=[
                outcome,
                repr(clock()),
                failure_threshold(),
                permit.token,
                code,
                int(max(MIN_TTL_SECONDS, 2 * cooldown_seconds())),
            ],
        )
    except redis.RedisError as exc:
        log.warning("circuit for %s: could not record a %s: %s", permit.host, outcome, exc)
        return None
    return state


def succeeded(permit: Permit) -> None:
    """The host answered (anything but 5xx/429): reset the count; a probe closes."""
    if _record(permit, "success") == CLOSED and permit.probe:
        log.info("circuit for %s closed: the trial request succeeded", permit.host)


def failed(permit: Permit, code: str) -> None:
    """The host failed us (5xx, 429, network, timeout)."""
    outcome = _record(permit, "failure", code)
    if outcome == "opened":
        log.warning(
            "circuit for %s opened after %s consecutive failures (last: %s)",
            permit.host,
            failure_threshold(),
            code,
        )
    elif outcome == "reopened":
        log.warning("circuit for %s opened again: the trial request failed (%s)", permit.host, code)


def release(permit: Permit) -> None:
    """The request never reached the host (refused by the address guard, a bug): no
    verdict, but a probe gives back the half-open slot."""
    if permit.probe:
        _record(permit, "release")


def _status(host: str, fields: dict[str, str], now: float) -> CircuitStatus:
    opened_at = _float(fields.get("opened_at"))
    state = fields.get("state") or CLOSED
    retry_in = None
    if state == OPEN:
        left = (opened_at or 0.0) + cooldown_seconds() - now
        if left > 0:
            retry_in = left
        else:
            state = HALF_OPEN
    return CircuitStatus(
        host=host,
        state=state,
        failures=int(fields.get("failures") or 0),
        opened_at=opened_at if state != CLOSED else None,
        retry_in=retry_in,
        last_error=fields.get("last_error", ""),
        last_failure_at=_float(fields.get("last_failure_at")),
        last_success_at=_float(fields.get("last_success_at")),
    )


def status(host: str) -> CircuitStatus | None:
    fields = redis_client.client().hgetall(_key(host))
    return _status(host, fields, clock()) if fields else None


def circuits() -> list[CircuitStatus]:
    """Every host the breaker knows, open ones first, then by name."""
    conn = redis_client.client()
    prefix = _key("")
    keys = sorted(conn.scan_iter(match=_glob_escape(prefix) + "*", count=500))
    pipe = conn.pipeline(transaction=False)
    for name in keys:
        pipe.hgetall(name)
    now = clock()
    found = [
        _status(name[len(prefix) :], fields, now)
        for name, fields in zip(keys, pipe.execute(), strict=True)
        if fields  # expired between SCAN and HGETALL
    ]
    order = {OPEN: 0, HALF_OPEN: 1, CLOSED: 2}
    return sorted(found, key=lambda c: (order.get(c.state, 3), c.host))


def reset(host: str) -> list[str]:
    """Forget the circuit of `host` ("host:port"; a bare host means all its ports), closing
    it. Returns the hosts reset."""
    host = host.strip().lower()
    known = [c.host for c in circuits()]
    chosen = [h for h in known if h == host] or [h for h in known if h.rsplit(":", 1)[0] == host]
    if chosen:
        redis_client.client().delete(*(_key(h) for h in chosen))
    return chosen


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return (
        datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
