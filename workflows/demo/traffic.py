"""Demo traffic: sample events for the demo workflows, so a newcomer sees events flow, runs
succeed, some fail after retries (and can be replayed) within a minute of `make run`.

Off by default. An operator turns it on from the overview page; the switch is a Redis key
that expires by itself (DEMO_TTL_SECONDS), so a forgotten switch does not fill the database.
The scheduler calls `tick()` every round; it emits about RATE events per second through the
ordinary ingest service (channel "demo", source "/demo/..."). Nothing leaves the machine:
the demo workflows only log, branch, fail and emit events.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass

import redis

from workflows.events.envelope import Envelope
from workflows.infra.redis_client import client, key

log = logging.getLogger("signalbox.demo")

DEMO_TTL_SECONDS = 30 * 60
RATE = 2.0  # events per second while on
MAX_PER_TICK = 20  # after a pause (the scheduler was busy) do not flood
CHANNEL = "demo"


@dataclass(frozen=True)
class DemoState:
    on: bool
    by: str = ""
    seconds_left: int = 0


def _switch_key() -> str:
    return key("demo", "traffic")


def _last_key() -> str:
    return key("demo", "last-tick")


def state() -> DemoState:
    try:
        conn = client()
        raw = conn.get(_switch_key())
        ttl = conn.ttl(_switch_key()) if raw else 0
    except redis.RedisError:
        return DemoState(on=False)
    if not raw:
        return DemoState(on=False)
    by = json.loads(raw).get("by", "") if raw.startswith("{") else ""
    return DemoState(on=True, by=by, seconds_left=max(0, int(ttl)))


def switch(*, on: bool, by: str) -> DemoState:
    conn = client()
    if on:
        conn.set(_switch_key(), json.dumps({"by": by, "at": time.time()}), ex=DEMO_TTL_SECONDS)
        conn.set(_last_key(), repr(time.time()), ex=DEMO_TTL_SECONDS)
    else:
        conn.delete(_switch_key(), _last_key())
    log.info("demo traffic switched %s by %s", "on" if on else "off", by)
    return state()


def sample(rng: random.Random) -> Envelope:
    """One sample event. About a third are payments; amounts over 900 are declined by the
    demo-payments workflow after three attempts (a failed run and a dead letter to replay);
    settled payments emit an event that starts demo-shipping (a lineage two runs deep)."""
    n = rng.randrange(1, 10_000)
    if rng.random() < 0.35:
        amount = round(rng.uniform(5, 1000), 2)
        card = rng.choice(["visa", "mastercard", "amex"])
        data = {"order": n, "amount": amount, "currency": "EUR", "card": card}
        return _order_event("/demo/checkout", "com.example.payment.requested", data)
    items = rng.randrange(1, 6)
    customer = rng.choice(["ada", "grace", "linus", "margaret", "ken"])
    data = {"order": n, "items": items, "customer": customer}
    return _order_event("/demo/shop", "com.example.order.placed", data)


def _order_event(source: str, type_: str, data: dict) -> Envelope:
    return Envelope(
        id=str(uuid.uuid4()),
        source=source,
        type=type_,
        subject=f"order-{data['order']}",
        datacontenttype="application/json",
        data=data,
    )


def due(now: float, last: float | None) -> int:
    if last is None:
        return 1
    return max(0, min(MAX_PER_TICK, int((now - last) * RATE)))


def tick(*, rng: random.Random | None = None, now: float | None = None) -> int:
    """Emit the demo events due since the last tick. Returns how many were sent."""
    from workflows.events.schemas import SchemaViolation
    from workflows.runs.matching import ingest_event

    if not state().on:
        return 0
    conn = client()
    now = time.time() if now is None else now
    raw_last = conn.get(_last_key())
    count = due(now, float(raw_last) if raw_last else None)
    if not count:
        return 0
    # Advance by whole events only, so fractions carry over to the next tick.
    last = (float(raw_last) + count / RATE) if raw_last else now
    conn.set(_last_key(), repr(min(last, now)), ex=DEMO_TTL_SECONDS)
    rng = rng or random.Random()
    sent = 0
    for _ in range(count):
        try:
            ingest_event(envelope=sample(rng), channel=CHANNEL)
            sent += 1
        except SchemaViolation as exc:  # someone registered a stricter schema: say so once
            log.warning("demo event refused by its schema: %s", exc)
            break
    return sent
