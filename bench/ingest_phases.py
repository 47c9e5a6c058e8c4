"""The loads bench.ingest (and bench.connectors) measure with: HTTP closed loops (Python
client threads or wrk) and Redis stream producers, each returning a Result."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable

import httpx
import psycopg
import redis

from bench.results import Result
from bench.stack import EVENT_TYPE, ROOT

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def structured_event(tag: str, n: int, *, source: str = "/bench/http") -> dict:
    return {
        "specversion": "1.0",
        "id": f"{tag}-{n}",
        "source": source,
        "type": EVENT_TYPE,
        "subject": f"order-{n % 64}",
        "datacontenttype": "application/json",
        "data": {"order": n, "amount": 12.5, "currency": "EUR", "items": [{"sku": "A-1"}]},
    }


def http_phase(
    name: str,
    *,
    base_url: str,
    token: str,
    path: str,
    content_type: str,
    body: Callable[[int], bytes],
    events_per_request: int,
    clients: int,
    seconds: float,
    max_requests: int,
    warm_up: int = 10,
) -> Result:
    """Closed loop: `clients` threads, each on its own keep-alive connection, send the next
    body as soon as the previous one is answered, until the time or the requests run out."""
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}
    counter = itertools.count()
    warm_ups = itertools.count(10_000_000)  # keys of their own: unique event ids
    latencies: list[float] = []
    errors: list[str] = []
    failures: list[BaseException] = []
    start = threading.Barrier(clients + 1, timeout=120)
    deadline = [math.inf]  # the real one is set once every client has connected

    def client_loop() -> None:
        try:
            with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
                for _ in range(warm_up // clients + 1):  # connect, warm the server's caches
                    client.post(path, content=body(next(warm_ups)))
                start.wait()
                while time.perf_counter() < deadline[0]:
                    n = next(counter)
                    if n >= max_requests:
                        break
                    content = body(n)
                    began = time.perf_counter()
                    response = client.post(path, content=content)
                    latencies.append((time.perf_counter() - began) * 1000)
                    if response.status_code != 202:
                        errors.append(f"{response.status_code} {response.text[:200]}")
        except BaseException as exc:
            failures.append(exc)
            start.abort()  # do not leave the others (and the caller) waiting for us
            raise

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        for thread in threads:
            thread.join(60)
        raise RuntimeError(f"{name}: a client failed: {failures[:1]!r}") from None
    began = time.perf_counter()
    deadline[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{name}: a client failed: {failures[0]!r}")
    ok = len(latencies) - len(errors)
    if errors:
        print(f"  {name}: {len(errors)} error(s), first: {errors[0]}", flush=True)
    return Result(name, ok * events_per_request, len(latencies), elapsed, latencies, len(errors))


WRK_SCRIPT = ROOT / "bench" / "wrk" / "cloudevents.lua"
WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_phase(
    name: str,
    url: str,
    *,
    token: str | None,
    seconds: float,
    batch: int = 0,
    connections: int = 10,
    event_type: str = EVENT_TYPE,
) -> Result:
    """wrk, 2 threads and `connections` keep-alive connections, POSTing structured
    CloudEvents with ids no other request uses (bench/wrk/cloudevents.lua)."""
    env = dict(os.environ, BATCH=str(batch), TYPE=event_type)
    if token:
        env["TOKEN"] = token
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(WRK_SCRIPT), url],
        capture_output=True, text=True, env=env, timeout=seconds + 60, check=False,
    )  # fmt: skip
    out = done.stdout
    requests = int(_wrk_field(out, r"(\d+) requests in") or 0)
    elapsed = _wrk_field(out, r"requests in ([\d.]+\w+),") or "0s"
    errors = int(_wrk_field(out, r"Non-2xx or 3xx responses: (\d+)") or 0)
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    percentiles = {
        f"p{q}": _wrk_ms(_wrk_field(out, rf"^\s+{q}%\s+(\S+)") or "nan") for q in (50, 99)
    }
    per_request = batch or 1
    ok = max(0, requests - errors)
    return Result(
        name, ok * per_request, requests, _wrk_ms(elapsed) / 1000, [], errors,
        reported=percentiles,
    )  # fmt: skip


def _wrk_field(text: str, pattern: str) -> str | None:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1) if found else None


def _wrk_ms(value: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not found:
        return float("nan")
    number, unit = float(found.group(1)), found.group(2)
    return number * (60_000.0 if unit == "m" else WRK_UNITS[unit])


def xadd_phase(
    name: str, producer: redis.Redis, stream: str, fields: Callable[[int], dict], count: int
) -> tuple[Result, dict[str, float]]:
    """One producer, one XADD per round trip. Returns the result and each entry's send time
    (wall clock, to compare with the database's received_at)."""
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    began = time.perf_counter()
    for n in range(count):
        entry = fields(n)
        sent_at[entry["id"]] = time.time()
        t0 = time.perf_counter()
        producer.xadd(stream, entry)
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - began
    return Result(name, count, count, elapsed, latencies), sent_at


def stream_ingest_phase(
    name: str,
    *,
    producer: redis.Redis,
    stream: str,
    database_url: str,
    tag: str,
    count: int,
    pace_per_s: float | None,
    timeout: float,
) -> Result:
    """XADD `count` entries to a stream Signalbox reads, then wait for their Event rows.
    Throughput: entries / (last row's received_at - first send). Latency: per entry."""
    source = f"/bench/stream/{tag}"

    def fields(n: int) -> dict:
        return {
            "type": EVENT_TYPE,
            "source": source,
            "id": f"{tag}-{n}",
            "subject": f"order-{n % 64}",
            "data": json.dumps({"order": n, "amount": 12.5, "currency": "EUR"}),
        }

    sent_at: dict[str, float] = {}
    first_sent = time.time()
    if pace_per_s:
        for n in range(count):
            due = first_sent + n / pace_per_s
            time.sleep(max(0.0, due - time.time()))
            entry = fields(n)
            sent_at[entry["id"]] = time.time()
            producer.xadd(stream, entry)
    else:
        _raw, sent_at = xadd_phase(name, producer, stream, fields, count)
        first_sent = min(sent_at.values())

    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = 0
        while time.monotonic() < deadline:
            stored = conn.execute(
                "SELECT count(*) FROM workflows_event WHERE source = %s", (source,)
            ).fetchone()[0]
            if stored >= count:
                break
            time.sleep(0.1)
        rows = conn.execute(
            "SELECT ce_id, extract(epoch from received_at) FROM workflows_event WHERE source = %s",
            (source,),
        ).fetchall()
    latencies = [(float(received) - sent_at[ce_id]) * 1000 for ce_id, received in rows]
    last = max((float(received) for _id, received in rows), default=first_sent)
    note = "" if len(rows) >= count else f"only {len(rows)} of {count} ingested in {timeout:.0f}s"
    return Result(name, len(rows), count, last - first_sent, latencies, count - len(rows), note)
