"""Every dashboard page's server time at a million stored runs (issue 12 item 8: < 300 ms).

    python -m bench.pages              # a throwaway PostgreSQL database and redis-server;
                                       # about three minutes on 2 cores
    python -m bench.pages --quick      # 100,000 runs, fewer requests (a smoke run)

The runs and their trigger events are made exactly as the EXPLAIN tests make them
(tests/million_runs.py: generate_series, secondary indexes dropped during the load and built
again, VACUUM ANALYZE). A signed-in admin then requests every page through Django's test
client (full middleware, view and template, no HTTP server: the time is the server's own,
measured around the request, as the pages send no Server-Timing header): the overview in
each time range, the run list with each filter, a run page, events, dead letters, replays
with filters, re-drive, audit, workflows, the editor, schemas, connections, workers and
secrets. The overview's few-second cache is cleared before every request, so each one
computes its figures. Each page's every query is then EXPLAIN ANALYZEd, and a Seq Scan of a
big table is named. A page whose median is at or over 300 ms is flagged SLOW.

Results go to stdout and var/bench/pages-<time>.json; docs/benchmarks.md keeps the record.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # `python bench/pages.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.growth import Services, setup_django
from bench.growth_pages import ROWS_READ_LIMIT, explain_queries
from bench.machine import machine
from bench.results import percentile

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
LIMIT_MS = 300.0


def load(runs: int) -> dict:
    """The tests' million runs (tests/million_runs.py), then what the scheduler would have
    kept up to date as they arrived (the overview's rollups)."""
    from django.db import connection

    from tests.factories import definition, log_step
    from tests.million_runs import WORKFLOWS, load_runs
    from workflows.authoring.definitions import publish_workflow, put_workflow

    slugs = [f"keyset-{n}" for n in range(WORKFLOWS)]
    versions = []
    for slug in slugs:
        put_workflow(slug=slug, raw=definition(log_step("only")))
        versions.append(publish_workflow(slug=slug))
    began = time.perf_counter()
    with connection.cursor() as cursor:
        load_runs(cursor, [v.workflow_id for v in versions], [v.pk for v in versions], runs)
        loaded_s = time.perf_counter() - began
        cursor.execute("SELECT count(*), min(id), max(id) FROM workflows_run")
        total, low, high = cursor.fetchone()
        cursor.execute("SELECT max(id) FROM workflows_event")
        (newest_event,) = cursor.fetchone()
        cursor.execute(
            "SELECT id FROM workflows_run WHERE status = 'failed' ORDER BY id DESC LIMIT 5"
        )
        failed = [row[0] for row in cursor.fetchall()]
    catch_up_s = catch_up()
    return {
        "runs": total,
        "low": low,
        "high": high,
        "newest_event": newest_event,
        "failed": failed,
        "slugs": slugs,
        "load_s": round(loaded_s, 1),
        "catch_up_s": round(catch_up_s, 1),
    }


def catch_up() -> float:
    """What the scheduler does as events arrive (the overview's per-minute rollups), done
    at once for rows loaded in bulk."""
    from workflows.queries import event_rollups

    began = time.perf_counter()
    event_rollups.catch_up()
    return time.perf_counter() - began


def pages(loaded: dict) -> list[tuple[str, str, dict]]:
    """(name, url, headers) of every page, the filters each offers included."""
    now = datetime.now(UTC)

    def at(hours: float) -> str:
        return (now - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S")

    slug, other = loaded["slugs"][0], loaded["slugs"][2]
    middle = (loaded["low"] + loaded["high"]) // 2
    deep = loaded["low"] + (loaded["high"] - loaded["low"]) // 10
    run, failed = loaded["high"], loaded["failed"][0]
    event = loaded["newest_event"]
    htmx = {"HTTP_HX_REQUEST": "true"}
    ticked = "&".join(f"run={pk}" for pk in loaded["failed"])
    return [
        ("overview 15m", "/overview/", {}),
        ("overview 1h", "/overview/?window=1h", {}),
        ("overview 6h", "/overview/?window=6h", {}),
        ("live flow", "/flow/", {}),
        ("runs", "/runs/", {}),
        ("runs: workflow", f"/runs/?workflow={slug}", {}),
        ("runs: failed", "/runs/?status=failed", {}),
        ("runs: workflow + failed", f"/runs/?workflow={slug}&status=failed", {}),
        ("runs: a day ago, 1 h", f"/runs/?after={at(25)}&before={at(24)}", {}),
        ("runs: correlation id", "/runs/?correlation_id=conv-123456", {}),
        ("runs: text", "/runs/?q=needle", {}),
        ("runs: deep page", f"/runs/?before_id={deep}", {}),
        ("runs: next rows (htmx)", f"/runs/?before_id={middle}", htmx),
        ("run page", f"/runs/{run}/", {}),
        ("run page: failed", f"/runs/{failed}/", {}),
        ("run recovery panel", f"/runs/{failed}/recovery/", {}),
        ("replay one run", f"/runs/{failed}/replay/", {}),
        ("events", "/events/", {}),
        ("events: type", "/events/?type=com.example.paid", {}),
        ("events: deep page", f"/events/?before_id={deep}", {}),
        ("event page", f"/events/{event}/", {}),
        ("lineage", f"/events/{event}/lineage/", {}),
        ("dead letters", "/dead-letters/", {}),
        ("dead letters: all", "/dead-letters/?state=all", {}),
        ("replays", "/replays/", {}),
        ("replays: workflow", f"/replays/?workflow={slug}", {}),
        ("replays: workflow, v1", f"/replays/?workflow={other}&version=1", {}),
        ("replays: error text", "/replays/?error=HTTP+502", {}),
        ("replays: finished 2-3 h ago", f"/replays/?after={at(3)}&before={at(2)}", {}),
        ("replays: all filters", f"/replays/?workflow={slug}&error=50&after={at(20)}", {}),
        ("replays: ticked, dry run", f"/replays/?{ticked}&dry_run=1", {}),
        ("replays: workflow, dry run", f"/replays/?workflow={slug}&dry_run=1", {}),
        ("re-drive", "/redrive/", {}),
        ("re-drive: type, dry run", f"/redrive/?type=com.example.paid&workflow={slug}", {}),
        ("audit", "/audit/", {}),
        ("workflows", "/workflows/", {}),
        ("editor", f"/workflows/{slug}/edit/", {}),
        ("editor: runs", f"/workflows/{slug}/edit/runs", htmx),
        ("editor: versions", f"/workflows/{slug}/edit/versions", htmx),
        ("schemas", "/schemas/", {}),
        ("connections", "/connections/", {}),
        ("workers", "/system/", {}),
        ("secrets", "/secrets/", {}),
    ]


def measure(client, name: str, url: str, headers: dict, requests: int) -> dict:
    """`requests` timed GETs after one untimed, each with the overview's cache emptied."""
    from dashboard import metrics

    def get():
        metrics.cache.clear()
        return client.get(url, **headers)

    response = get()
    if response.status_code != 200:
        raise RuntimeError(f"{name}: {url} answered {response.status_code}")
    times, cpu = [], []
    for _ in range(requests):
        began, began_cpu = time.perf_counter(), time.thread_time()
        response = get()
        times.append((time.perf_counter() - began) * 1000)
        cpu.append((time.thread_time() - began_cpu) * 1000)
    metrics.cache.clear()
    plans = explain_queries(client, url, headers)
    return {
        "name": name,
        "url": url,
        "p50_ms": round(percentile(times, 0.5), 1),
        "max_ms": round(max(times), 1),
        "cpu_p50_ms": round(percentile(cpu, 0.5), 1),
        **{k: v for k, v in plans.items() if k != "sql_ms"},
        "sql_ms": round(plans["sql_ms"], 1),
    }


def line(r: dict) -> str:
    flags = "  SLOW" if r["p50_ms"] >= LIMIT_MS else ""
    if r["seq_scans"]:
        flags += f"  SEQ SCAN on {', '.join(r['seq_scans'])}"
    if r["rows_read"] > ROWS_READ_LIMIT:
        flags += f"  reads {r['rows_read']:,} rows"
    return (
        f"{r['name']:<30}{r['p50_ms']:>9.1f}{r['max_ms']:>9.1f}{r['cpu_p50_ms']:>9.1f}"
        f"{r['queries']:>9}{r['sql_ms']:>9.1f}{flags}"
    )


HEADER = f"{'page':<30}{'p50 ms':>9}{'max ms':>9}{'cpu p50':>9}{'queries':>9}{'SQL ms':>9}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server for the throwaway database")
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs in the run table")
    parser.add_argument("--requests", type=int, default=5, help="timed requests per page")
    parser.add_argument(
        "--only", help="pages whose name contains this text (several: separated by commas)"
    )
    parser.add_argument("--quick", action="store_true", help="100,000 runs, 2 requests a page")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.requests = 100_000, 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tag = uuid.uuid4().hex[:8]
    services = Services(tag, args.database_url)
    print("starting a throwaway PostgreSQL database and redis-server", flush=True)
    report: dict = {"options": vars(args)}
    results: list[dict] = []
    try:
        services.start()
        setup_django(services)
        info = machine(services.database_url, services.redis_url)
        report["machine"] = info
        print(f"machine: {json.dumps(info)}", flush=True)
        print(f"loading {args.runs:,} runs ...", flush=True)
        report["loaded"] = loaded = load(args.runs)
        print(
            f"  {loaded['runs']:,} runs in {loaded['load_s']} s;"
            f" rollups caught up in {loaded['catch_up_s']} s",
            flush=True,
        )
        from django.contrib.auth import get_user_model
        from django.test import Client

        admin = get_user_model().objects.create_superuser(f"pages-{tag}", "", "x" * 16)
        client = Client(HTTP_HOST="127.0.0.1")
        assert client.login(username=admin.username, password="x" * 16)
        gc.collect()
        gc.freeze()  # the loader's objects are no web server's: keep them out of GC passes
        print(f"\nserver time per page at {loaded['runs']:,} runs ({args.requests} requests):")
        print(f"  {HEADER}", flush=True)
        for name, url, headers in pages(loaded):
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            result = measure(client, name, url, headers, args.requests)
            results.append(result)
            print(f"  {line(result)}", flush=True)
    finally:
        services.stop()
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    slow = [r["name"] for r in results if r["p50_ms"] >= LIMIT_MS]
    scanning = [r["name"] for r in results if r["seq_scans"]]
    print("\nplans (scans of the big tables, from EXPLAIN ANALYZE of every query):")
    for r in results:
        print(f"  {r['name']}: {'; '.join(r['scans']) or 'no big table read'}")
    print(f"\npages at or over {LIMIT_MS:.0f} ms: {', '.join(slow) or 'none'}")
    print(f"pages with a Seq Scan of a big table: {', '.join(scanning) or 'none'}")
    print(f"load average before/after: {info['load_average']} / {info['load_average_after']}")
    report["pages"] = results
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"pages-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"written to {path.relative_to(ROOT)}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
