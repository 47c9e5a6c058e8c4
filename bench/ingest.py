"""Ingest benchmark: events/s accepted, and time to accepted, beside a baseline of the same run.

    python -m bench.ingest            # its own throwaway stack: PostgreSQL database, Redis, all
                                      # processes; about two minutes on 2 cores
    python -m bench.ingest --quick    # shorter phases (about one minute)
    python -m bench.ingest --url http://127.0.0.1:8000 --token sbx_...
                                      # a running server: HTTP phases only (the baseline only if
                                      # that server runs with SIGNALBOX_BENCH_BASELINE=1)

Phases, each bounded in requests and seconds, loopback only:
  (a) single structured CloudEvents (application/cloudevents+json), CLIENTS threads each on
      one keep-alive connection, closed loop; baseline: the same bodies to /bench/baseline, a
      bare Django view on the same server that answers 202 without storing anything.
  (b) batches of 100 (application/cloudevents-batch+json); baseline: the same batches to
      /bench/baseline.
  (c) an external Redis stream (flat fields, one XADD per entry, one producer): a flood for
      throughput and a paced trickle for latency, each "time to accepted" being from just
      before the XADD to the Event row's received_at; baseline: raw XADD to a stream nobody
      reads, same producer, same fields.

Results go to stdout and var/bench/ingest-<time>.json; docs/benchmarks.md keeps the record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import uuid
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # `python bench/ingest.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
import redis

from bench.ingest_phases import (
    BATCH,
    STRUCTURED,
    http_phase,
    stream_ingest_phase,
    structured_event,
    wrk_phase,
    xadd_phase,
)
from bench.ingest_profile import Profile
from bench.ingest_report import (
    BATCHES,
    BATCHES_ALONE,
    DURABLE,
    EMBEDDED,
    SINGLE,
    SINGLE_ALONE,
    check_targets,
    print_table,
)
from bench.machine import machine
from bench.results import Result
from bench.stack import EVENT_TYPE, OUT, ROOT, Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running Signalbox (default: start a throwaway one)")
    parser.add_argument("--token", help="an API token with the editor role, with --url")
    parser.add_argument("--database-url", help="PostgreSQL server for the throwaway stack")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--seconds", type=float, default=8.0, help="limit per HTTP phase")
    parser.add_argument("--events", type=int, default=4000, help="single events, at most")
    parser.add_argument("--batches", type=int, default=150, help="batches of 100, at most")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--stream-events", type=int, default=2000, help="stream flood size")
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument(
        "--python-clients", action="store_true", help="Python client threads instead of wrk"
    )
    parser.add_argument(
        "--no-embedded", action="store_true", help="skip the embedded-default (SQLite) phase"
    )
    parser.add_argument(
        "--settings",
        default="orchestrator.settings",
        help="settings module for the throwaway stack, to try a change (PYTHONPATH is passed on)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.events, args.batches, args.stream_events = 3.0, 1000, 30, 500
    if args.url and not args.token:
        parser.error("--url needs --token")

    # A `kill` (or the shell's job control) must still stop the stack and drop its database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tag = uuid.uuid4().hex[:8]
    stack = None
    if args.url:
        base_url, token = args.url.rstrip("/"), args.token
    else:
        print("starting a throwaway stack (database, redis-server, web, worker, bus, scheduler)")
        stack = Stack(tag, args.database_url, settings=args.settings)
        try:
            stack.start()
        except BaseException:
            stack.stop()
            raise
        base_url, token = stack.base_url, stack.token
    info = machine(stack and stack.database_url, stack and stack.redis_url)
    print(f"machine: {json.dumps(info)}", flush=True)

    rows: list[tuple[Result, Result | None]] = []
    use_wrk = shutil.which("wrk") is not None and not args.python_clients
    if not use_wrk:
        print("wrk not found (apt-get install wrk): Python clients, which saturate first")
    try:
        if use_wrk:
            rows += wrk_rows(stack, base_url, token, args)
        else:
            rows += python_client_rows(base_url, token, tag, args)
        if stack is not None:
            rows += stream_rows(stack, tag, args)
            if use_wrk:
                rows += web_tier_rows(stack, base_url, token, args)
            check_stored(stack, rows)
    finally:
        if stack is not None:
            stack.stop()
    if use_wrk and not args.url and not args.no_embedded:
        rows += embedded_rows(tag, args)

    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print_table(rows)
    print(f"\nload average before/after: {info['load_average']} / {info['load_average_after']}")
    targets = check_targets(rows)
    if Profile.summary:
        print("\nwhere a web process's time goes, single events (py-spy samples):")
        for inclusive, own, name in Profile.summary:
            print(f"  {inclusive:6.1%} on stack {own:6.1%} own  {name}")
    OUT.mkdir(parents=True, exist_ok=True)
    report = OUT / f"ingest-{datetime.now():%Y%m%d-%H%M%S}.json"
    report.write_text(
        json.dumps(
            {
                "machine": info,
                "options": vars(args),
                "results": [{**r.summary(), "baseline": b.name if b else None} for r, b in rows],
                "targets": targets,
                "profile": [
                    {"on_stack": round(a, 4), "own": round(b, 4), "function": c}
                    for a, b, c in Profile.summary
                ],
            },
            indent=2,
        )
    )
    print(f"written to {report.relative_to(ROOT)}")
    return 0


def wrk_rows(stack, base_url: str, token: str, args) -> list[tuple[Result, Result | None]]:
    rows: list[tuple[Result, Result | None]] = []
    events_url = f"{base_url}/api/v1/events"
    wrk_phase("warm-up", events_url, token=token, seconds=2)  # token cache, connections
    durable = None
    if stack is not None:
        print("durable baseline (gunicorn, 2 sync workers) ...", flush=True)
        durable_url = stack.start_durable_baseline()
        wrk_phase("warm-up", durable_url, token=None, seconds=1)
        durable = wrk_phase(DURABLE, durable_url, token=None, seconds=args.seconds)
        rows.append((durable, None))
    print("ingest, single events ...", flush=True)
    sampler = Profile.start(stack, args.seconds) if stack is not None else None
    rows.append((wrk_phase(SINGLE, events_url, token=token, seconds=args.seconds), durable))
    if sampler is not None:
        sampler.finish()
    if httpx.post(f"{base_url}/bench/baseline", content=b"{}").status_code == 202:
        print("bare 202 view on the same server ...", flush=True)
        bare = wrk_phase(
            "HTTP baseline: bare 202 view, same server and middleware",
            f"{base_url}/bench/baseline",
            token=token,
            seconds=args.seconds,
        )
        rows.append((bare, None))
    print(f"ingest, batches of {args.batch_size} ...", flush=True)
    rows.append(
        (
            wrk_phase(
                BATCHES.format(n=args.batch_size),
                events_url,
                token=token,
                seconds=args.seconds,
                batch=args.batch_size,
            ),
            None,
        )
    )
    return rows


def web_tier_rows(stack, base_url: str, token: str, args) -> list[tuple[Result, Result | None]]:
    """The ingest tier alone, as the durable baseline is measured: the web processes,
    PostgreSQL and Redis, with the bus consumer, worker and scheduler stopped (events are
    still put on the bus; nobody matches them meanwhile). Each beside a durable baseline
    measured again right before it."""
    stack.stop_processes("bus", "worker", "scheduler")
    durable_url = stack.durable_url
    events_url = f"{base_url}/api/v1/events"
    print("web tier alone: durable baseline, single events, batches ...", flush=True)
    durable = wrk_phase(DURABLE + ", again", durable_url, token=None, seconds=args.seconds)
    single = wrk_phase(SINGLE_ALONE, events_url, token=token, seconds=args.seconds)
    batches = wrk_phase(
        BATCHES_ALONE.format(n=args.batch_size),
        events_url,
        token=token,
        seconds=args.seconds,
        batch=args.batch_size,
    )
    return [(durable, None), (single, durable), (batches, None)]


def embedded_rows(tag: str, args) -> list[tuple[Result, Result | None]]:
    """`make run`'s default: SQLite and every process, single events."""
    print("starting an embedded-default stack (SQLite) ...", flush=True)
    stack = Stack(f"{tag}e", None, settings=args.settings, embedded=True)
    try:
        stack.start()
        url = f"{stack.base_url}/api/v1/events"
        wrk_phase("warm-up", url, token=stack.token, seconds=2)
        return [(wrk_phase(EMBEDDED, url, token=stack.token, seconds=args.seconds), None)]
    finally:
        stack.stop()


def check_stored(stack, rows) -> None:
    """Every event answered 2xx is in the store."""
    with psycopg.connect(stack.database_url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM workflows_event WHERE source LIKE '/bench%%'"
        ).fetchone()[0]
    measured = sum(r.events for r, _b in rows if r.name.startswith("HTTP ingest"))
    print(f"\nstored over HTTP: {stored} events ({measured} measured, + warm-ups)")
    if stored < measured:
        raise RuntimeError("fewer events stored than answered 2xx")


def python_client_rows(base_url: str, token: str, tag: str, args):
    rows: list[tuple[Result, Result | None]] = []
    has_baseline = httpx.post(f"{base_url}/bench/baseline", content=b"{}").status_code == 202
    common = {"base_url": base_url, "token": token, "clients": args.clients}
    common["seconds"] = args.seconds

    def single(n: int) -> bytes:
        return json.dumps(structured_event(f"{tag}-s", n)).encode()

    def batch(n: int) -> bytes:
        return json.dumps(
            [structured_event(f"{tag}-b{n}", k) for k in range(args.batch_size)]
        ).encode()

    for label, path, mode, body, per, limit in (
        ("single structured event", "/api/v1/events", STRUCTURED, single, 1, args.events),
        (f"batch of {args.batch_size}", "/api/v1/events", BATCH, batch, args.batch_size,
         args.batches),
    ):  # fmt: skip
        base = None
        if has_baseline:
            print(f"baseline, {label} ...", flush=True)
            base = http_phase(
                f"HTTP baseline (bare 202), {label}",
                path="/bench/baseline",
                content_type=mode,
                body=body,
                events_per_request=per,
                max_requests=limit,
                **common,
            )
            rows.append((base, None))
        print(f"ingest, {label} ...", flush=True)
        rows.append(
            (
                http_phase(
                    f"HTTP ingest, {label}",
                    path=path,
                    content_type=mode,
                    body=body,
                    events_per_request=per,
                    max_requests=limit,
                    **common,
                ),
                base,
            )
        )
    return rows


def stream_rows(stack, tag: str, args) -> list[tuple[Result, Result | None]]:
    rows: list[tuple[Result, Result | None]] = []
    producer = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    print("raw XADD ...", flush=True)
    raw, _sent = xadd_phase(
        "raw XADD (baseline), one producer",
        producer,
        f"bench-raw-{tag}",
        lambda n: {
            "type": EVENT_TYPE,
            "source": "/bench/raw",
            "id": f"raw-{n}",
            "subject": f"order-{n % 64}",
            "data": json.dumps({"order": n, "amount": 12.5, "currency": "EUR"}),
        },
        args.stream_events,
    )
    producer.delete(f"bench-raw-{tag}")
    rows.append((raw, None))
    print("external stream ingest: warm-up ...", flush=True)
    warm = stream_ingest_phase(
        "warm-up",
        producer=producer,
        stream=stack.stream,
        database_url=stack.database_url,
        tag=f"{tag}-w",
        count=20,
        pace_per_s=None,
        timeout=60,
    )
    if warm.errors:
        raise RuntimeError(f"the external stream is not being ingested: {warm.note}")
    print("external stream ingest: flood ...", flush=True)
    rows.append(
        (
            stream_ingest_phase(
                f"stream ingest, flood of {args.stream_events}",
                producer=producer,
                stream=stack.stream,
                database_url=stack.database_url,
                tag=f"{tag}-f",
                count=args.stream_events,
                pace_per_s=None,
                timeout=180,
            ),
            raw,
        )
    )
    print("external stream ingest: paced, 25 entries/s ...", flush=True)
    rows.append(
        (
            stream_ingest_phase(
                "stream ingest, paced 25/s (latency)",
                producer=producer,
                stream=stack.stream,
                database_url=stack.database_url,
                tag=f"{tag}-p",
                count=100,
                pace_per_s=25,
                timeout=60,
            ),
            None,
        )
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
