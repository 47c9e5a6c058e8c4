"""What the per-token ingest rate limit adds to a request (workflows/events/rate_limit.py).

Calls the limiter as the fast path (`acheck`, on an event loop) and the view (`check`) do,
one event per request, against the configured Redis under a throwaway key prefix, and
prints the CPU and wall time per request: with the default limits (a lease every 50 ms
of rate, so most requests need no round trip) and with every request asking Redis (a
rate so low no lease is taken: the cost of the round trip itself).

    .venv/bin/python -m bench.rate_limit [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid


def measure(requests: int) -> list[tuple[str, float, float, int]]:
    from django.conf import settings

    from workflows.events import rate_limit

    rows = []
    limits = settings.SIGNALBOX

    def sync_round(label: str, token_id: int) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        allowed = sum(rate_limit.check(token_id=token_id, cost=1).allowed for _ in range(requests))
        rows.append(_row(label, cpu, wall, requests, allowed))

    async def async_round(label: str, token_id: int) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        allowed = 0
        for _ in range(requests):
            allowed += (await rate_limit.acheck(token_id=token_id, cost=1)).allowed
        rows.append(_row(label, cpu, wall, requests, allowed))

    base = uuid.uuid4().int % 10**9
    rate, burst = limits["INGEST_RATE_PER_TOKEN"], limits["INGEST_BURST_PER_TOKEN"]
    asyncio.run(async_round(f"fast path, default limits ({rate:g}/s, burst {burst})", base))
    sync_round(f"view, default limits ({rate:g}/s, burst {burst})", base + 1)
    # A rate of 1/s and a huge burst: every request allowed, none covered by a lease.
    limits["INGEST_RATE_PER_TOKEN"], limits["INGEST_BURST_PER_TOKEN"] = 1.0, 10**9
    asyncio.run(async_round("fast path, a Redis round trip every request", base + 2))
    sync_round("view, a Redis round trip every request", base + 3)
    return rows


def _row(label, cpu, wall, requests, allowed):
    return (
        label,
        (time.process_time() - cpu) / requests * 1e6,
        (time.perf_counter() - wall) / requests * 1e6,
        allowed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    prefix = f"sbx-bench-ratelimit-{uuid.uuid4().hex[:8]}"
    os.environ["SIGNALBOX_REDIS_PREFIX"] = prefix
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()
    from workflows.infra.redis_client import client

    try:
        rows = measure(args.requests)
    finally:
        for stale in client().scan_iter(f"{prefix}:*"):
            client().delete(stale)
    print(f"{'':58} {'CPU µs/req':>11} {'wall µs/req':>12} {'allowed':>8}")
    for label, cpu, wall, allowed in rows:
        print(f"{label:58} {cpu:11.1f} {wall:12.1f} {allowed:8}")


if __name__ == "__main__":
    main()
