"""bench.growth, part (b): the run list and the run page at a million runs.

The runs (with their trigger events) are made with INSERT ... SELECT generate_series, the
newest with step runs and journal rows; each page is requested through Django's test
client and every query it ran is EXPLAIN ANALYZEd. See bench/growth.py.
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field

from bench.results import percentile

EVENT_TYPE = "com.example.growth"
BIG_TABLES = ("workflows_run", "workflows_event", "workflows_steprun", "workflows_runjournal")


# --- (b) the run list and the run page at a million runs ---------------------------------------


def load_runs(count: int, sample: int, hot: int) -> dict:
    """`count` runs of `hot` workflows (with their trigger events), 1% failed and 0.5%
    running; the newest `sample` runs get 3 step runs and 8 journal rows each."""
    from django.db import connection

    from workflows.catalog.models import Workflow

    workflows = list(
        Workflow.objects.filter(published_version__isnull=False)
        .order_by("id")
        .values_list("id", "published_version_id", "slug")[:hot]
    )
    workflow_ids = [w[0] for w in workflows]
    version_ids = [w[1] for w in workflows]
    timings = {}
    with connection.cursor() as cursor:
        began = time.perf_counter()
        cursor.execute(
            """
            INSERT INTO workflows_event (source, ce_id, type, subject, specversion,
                datacontenttype, dataschema, data, data_is_base64, extensions,
                correlation_id, causation_id, validation, channel, received_at,
                published_at, matched_at)
            SELECT '/bench/growth/load', 'load-' || g, %(type)s, 'order-' || (g %% 1000), '1.0',
                'application/json', '', jsonb_build_object('order', g, 'amount', 12.5),
                false, '{}'::jsonb, 'conv-' || g, 'load-' || g, 'unvalidated', 'http',
                now() - ((%(n)s - g) * interval '50 milliseconds'),
                now() - ((%(n)s - g) * interval '50 milliseconds'),
                now() - ((%(n)s - g) * interval '50 milliseconds')
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": count, "type": EVENT_TYPE},
        )
        timings["events_s"] = time.perf_counter() - began
        began = time.perf_counter()
        cursor.execute(
            """
            INSERT INTO workflows_run (workflow_id, version_id, event_id, status, error, origin,
                replay_from_step, correlation_id, partition_key, seq, created_at, started_at,
                finished_at)
            SELECT (%(workflows)s::bigint[])[1 + e.id %% %(k)s],
                (%(versions)s::bigint[])[1 + e.id %% %(k)s], e.id,
                CASE WHEN e.id %% 100 = 0 THEN 'failed'
                     WHEN e.id %% 200 = 1 THEN 'running' ELSE 'succeeded' END,
                CASE WHEN e.id %% 100 = 0 THEN 'step only failed' ELSE '' END,
                'trigger', '', e.correlation_id, '', 4, e.received_at, e.received_at,
                CASE WHEN e.id %% 200 = 1 THEN NULL
                     ELSE e.received_at + interval '30 milliseconds' END
            FROM workflows_event e WHERE e.source = '/bench/growth/load' ORDER BY e.id
            """,
            {"workflows": workflow_ids, "versions": version_ids, "k": len(workflow_ids)},
        )
        timings["runs_s"] = time.perf_counter() - began
        began = time.perf_counter()
        cursor.execute(
            """
            CREATE TEMP TABLE growth_sample AS
            SELECT id, created_at FROM workflows_run ORDER BY id DESC LIMIT %(n)s
            """,
            {"n": sample},
        )
        cursor.execute(
            """
            INSERT INTO workflows_steprun (run_id, step_id, attempt, kind, status, input, output,
                error, error_code, retryable, port, idempotency_key, worker, created_at,
                enqueued_at, started_at, finished_at)
            SELECT s.id, 'step-' || k, 1, 'log', 'succeeded', '{"message": "hello"}'::jsonb,
                jsonb_build_object('logged', 'hello', 'n', k), '', '', false, 'success',
                s.id || ':step-' || k, 'bench@growth', s.created_at + k * interval '5 ms',
                s.created_at + k * interval '5 ms', s.created_at + k * interval '6 ms',
                s.created_at + k * interval '9 ms'
            FROM growth_sample s CROSS JOIN generate_series(1, 3) AS k
            """
        )
        cursor.execute(
            """
            INSERT INTO workflows_runjournal (run_id, seq, kind, data, at)
            SELECT s.id, k, CASE WHEN k = 1 THEN 'run.started' WHEN k = 8 THEN 'run.succeeded'
                    ELSE 'step.changed' END,
                jsonb_build_object('step', 'step-' || (1 + k / 3), 'seq', k),
                s.created_at + k * interval '3 ms'
            FROM growth_sample s CROSS JOIN generate_series(1, 8) AS k
            """
        )
        timings["steps_and_journal_s"] = time.perf_counter() - began
        began = time.perf_counter()
        for table in (
            "workflows_event",
            "workflows_run",
            "workflows_steprun",
            "workflows_runjournal",
        ):
            cursor.execute(f"ANALYZE {table}")
        timings["analyze_s"] = time.perf_counter() - began
        cursor.execute("SELECT min(id), max(id) FROM workflows_run")
        low, high = cursor.fetchone()
        cursor.execute("SELECT id FROM growth_sample ORDER BY id DESC LIMIT 20")
        sampled = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT count(*) FROM workflows_run")
        total = cursor.fetchone()[0]
        cursor.execute("SELECT max(id) FROM workflows_event")
        newest_event = cursor.fetchone()[0]
    return {
        "newest_event": newest_event,
        "runs": total,
        "low": low,
        "high": high,
        "sampled": sampled,
        "hot_slugs": [w[2] for w in workflows],
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }


@dataclass
class PageResult:
    name: str
    url: str
    times_ms: list[float] = field(repr=False)
    # This thread's CPU time per request: the server's own work, without the waits for a
    # core that the shared machine adds to wall time (the database's time is not in it).
    cpu_ms: list[float] = field(default_factory=list, repr=False)
    queries: int = 0
    sql_ms: float = 0.0
    scans: list[str] = field(default_factory=list)
    seq_scans: list[str] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    rows_read: int = 0

    @property
    def p50(self) -> float:
        return percentile(self.times_ms, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.times_ms, 0.99)

    def summary(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k not in ("times_ms", "cpu_ms")}
        return {
            **data,
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
            "cpu_p50_ms": round(percentile(self.cpu_ms, 0.5), 2),
            "cpu_p99_ms": round(percentile(self.cpu_ms, 0.99), 2),
        }


SCAN = re.compile(
    r"((?:Parallel )?(?:Seq Scan|Index Only Scan(?: Backward)?|Index Scan(?: Backward)?|"
    r"Bitmap Heap Scan|Bitmap Index Scan)(?: using (\S+))? on (\S+))"
)


ACTUAL_ROWS = re.compile(r"actual time=\S+ rows=(\d+) loops=(\d+)")
# A page that reads more rows than this from a big table grows with the data.
ROWS_READ_LIMIT = 10_000


def explain_queries(client, url: str, headers: dict) -> dict:
    """Request the page once, EXPLAIN ANALYZE every SELECT it ran; return the query count,
    the SQL execution time, the scans of big tables, the Seq Scans of big tables, the rows
    the scans of big tables returned, and the count()s that read more than ROWS_READ_LIMIT
    rows (a count over a page's rows is fine; over all runs it is not)."""
    from django.db import connection

    captured: list[tuple[str, object]] = []

    def capture(execute, sql_, params, many, context):
        captured.append((sql_, params))
        return execute(sql_, params, many, context)

    with connection.execute_wrapper(capture):
        response = client.get(url, **headers)
    assert response.status_code == 200, (url, response.status_code)
    scans: list[str] = []
    seq: list[str] = []
    counts: list[str] = []
    total_ms = 0.0
    rows_read = 0
    with connection.cursor() as cursor:
        for sql_, params in captured:
            if not sql_.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN ANALYZE " + sql_, params)
            lines = [row[0] for row in cursor.fetchall()]
            text = "\n".join(lines)
            total_ms += float(text.rsplit("Execution Time: ", 1)[1].split(" ms")[0])
            query_rows = 0
            for line in lines:
                scan = SCAN.search(line)
                if scan is None:
                    continue
                whole, index, table = scan.groups()
                table = table.strip('"')
                actual = ACTUAL_ROWS.search(line)
                if table in BIG_TABLES:
                    scans.append(f"{whole.split(' on ')[0]} {table}" if not index else whole)
                    if "Seq Scan" in whole:
                        seq.append(table)
                    if actual:
                        query_rows += int(actual.group(1)) * int(actual.group(2))
                elif whole.startswith("Bitmap Index Scan") and any(
                    t.split("_", 1)[1] in table for t in BIG_TABLES
                ):
                    scans.append(whole)
            rows_read += query_rows
            if re.search(r"COUNT\(", sql_, re.IGNORECASE) and query_rows > ROWS_READ_LIMIT:
                counts.append(sql_[:160])
    return {
        "queries": len(captured),
        "sql_ms": total_ms,
        "scans": list(dict.fromkeys(scans)),
        "seq_scans": sorted(set(seq)),
        "rows_read": rows_read,
        "counts": counts,
    }


def time_page(client, name: str, urls: list[str], requests: int, headers: dict) -> PageResult:
    """`requests` timed GETs (after 3 untimed), cycling through `urls`."""
    for url in urls[:3]:
        client.get(url, **headers)
    times, cpu = [], []
    for n in range(requests):
        url = urls[n % len(urls)]
        began, began_cpu = time.perf_counter(), time.thread_time()
        response = client.get(url, **headers)
        times.append((time.perf_counter() - began) * 1000)
        cpu.append((time.thread_time() - began_cpu) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {url} answered {response.status_code}")
    result = PageResult(name, urls[0], times, cpu)
    for key, value in explain_queries(client, urls[0], headers).items():
        setattr(result, key, value)
    return result


def run_list_part(args, tag: str) -> tuple[dict, list[PageResult]]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from workflows.access.tokens import create_api_token

    print(f"loading {args.runs:,} runs ...", flush=True)
    loaded = load_runs(args.runs, args.sample, hot=20)
    print(f"  {loaded['runs']:,} runs in the table; load times {loaded['timings']}", flush=True)
    admin = get_user_model().objects.create_superuser(f"growth-{tag}", "", "x" * 16)
    browser = Client(HTTP_HOST="127.0.0.1")
    browser.force_login(admin)
    _token, plaintext = create_api_token(name=f"growth-{tag}", role="viewer")
    api = Client(HTTP_HOST="127.0.0.1")
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}
    hot = loaded["hot_slugs"][0]
    middle = (loaded["low"] + loaded["high"]) // 2
    deep = loaded["low"] + (loaded["high"] - loaded["low"]) // 10
    runs = [f"/runs/{pk}/" for pk in loaded["sampled"]]
    pages = [
        ("runs: first page", browser, ["/runs/"], {}),
        ("runs: one workflow", browser, [f"/runs/?workflow={hot}"], {}),
        ("runs: failed", browser, ["/runs/?status=failed"], {}),
        ("runs: workflow + failed", browser, [f"/runs/?workflow={hot}&status=failed"], {}),
        ("runs: keyset page (middle)", browser, [f"/runs/?before_id={middle}"], {}),
        ("runs: keyset page (deep)", browser, [f"/runs/?before_id={deep}"], {}),
        (
            "runs: next rows (htmx)",
            browser,
            [f"/runs/?before_id={middle}"],
            {"HTTP_HX_REQUEST": "true"},
        ),
        ("run page", browser, runs, {}),
        ("events: first page", browser, ["/events/"], {}),
        ("events: deep page", browser, [f"/events/?before_id={deep}"], {}),
        # Every other dashboard page, at the same million runs (issue 12 item 8: < 300 ms).
        ("overview (15m)", browser, ["/overview/"], {}),
        ("overview (6h)", browser, ["/overview/?window=6h"], {}),
        ("live flow", browser, ["/flow/"], {}),
        ("workers", browser, ["/system/"], {}),
        ("dead letters", browser, ["/dead-letters/"], {}),
        ("replays (failed runs)", browser, ["/replays/"], {}),
        ("replays (ticked, dry run)", browser, [_ticked_dry_run(loaded)], {}),
        ("re-drive", browser, ["/redrive/"], {}),
        ("audit", browser, ["/audit/"], {}),
        ("workflows", browser, ["/workflows/"], {}),
        ("schemas", browser, ["/schemas/"], {}),
        ("connections", browser, ["/connections/"], {}),
        ("event page", browser, [f"/events/{loaded['newest_event']}/"], {}),
        ("lineage", browser, [f"/events/{loaded['newest_event']}/lineage/"], {}),
        ("API runs: first page", api, ["/api/v1/runs"], bearer),
        ("API runs: one workflow", api, [f"/api/v1/runs?workflow={hot}"], bearer),
        ("API runs: failed", api, ["/api/v1/runs?status=failed"], bearer),
        ("API runs: deep page", api, [f"/api/v1/runs?before={deep}"], bearer),
        ("API run", api, [f"/api/v1/runs/{pk}" for pk in loaded["sampled"]], bearer),
    ]
    # The objects this process made while loading (10,000 workflows, ...) are not a web
    # server's: collect them once and keep them out of the collector's later passes, so a
    # full collection of them does not land in one page's time.
    gc.collect()
    gc.freeze()
    results = []
    for name, client, urls, headers in pages:
        result = time_page(client, name, urls, args.requests, headers)
        results.append(result)
        print(f"  {page_line(result)}", flush=True)
    return loaded, results


def _ticked_dry_run(loaded: dict) -> str:
    """/replays/ for a handful of runs ticked in the run list, dry run included."""
    ticked = "&".join(f"run={pk}" for pk in loaded["sampled"][:20])
    return f"/replays/?{ticked}&dry_run=1"


def page_line(r: PageResult) -> str:
    flags = ""
    if r.seq_scans:
        flags += f"  SEQ SCAN on {', '.join(r.seq_scans)}"
    if r.rows_read > ROWS_READ_LIMIT:
        flags += f"  READS {r.rows_read:,} ROWS"
    if r.counts:
        flags += f"  COUNT over {len(r.counts)} big table(s)"
    return (
        f"{r.name:<30}{r.p50:>9.1f}{r.p99:>9.1f}{percentile(r.cpu_ms, 0.5):>9.1f}"
        f"{percentile(r.cpu_ms, 0.99):>9.1f}{r.queries:>9}{r.sql_ms:>9.1f}{r.rows_read:>8}{flags}"
    )
