"""Cost-growth benchmark: what 10,000 published workflows and a million runs cost.

    python -m bench.growth            # a throwaway PostgreSQL database and redis-server;
                                      # about five minutes on 2 cores
    python -m bench.growth --quick    # smaller sizes (a smoke run, about a minute)

Two parts, in one process, against the real code paths (no HTTP server: the figures are
the server's own time, not a client's):

  (a) ingest + match. Events of one type are ingested one by one (ingest_event: one
      transaction, XADD on commit), then the bus is drained as consume_bus does (XREADGROUP
      of up to 100 entries, match_events, one XACK per read). Measured with ~10 published
      workflows (two on the benchmark type, one of them filtered; eight on other types),
      then with 10,000: first with the rest on 500 other types (what the number of workflows
      costs), then with 20 of them moved to the benchmark type behind filters that do not
      pass (what each listener of the type costs), alternating, in the same run. Printed:
      events/s for ingest, for matching and for both, this process's CPU ms per event,
      queries per bus entry, and many/few ratios (median of each round's pair).
  (b) the run list and the run page at a million runs. The runs (with their trigger events)
      are made with INSERT ... SELECT generate_series, a sample of the newest with step
      runs and journal rows, then ANALYZEd. Each page is requested through Django's test
      client (full middleware, view and template) as an admin or an API token; p50/p99 of
      the server time are printed, with every query's EXPLAIN ANALYZE summarised: which
      index reads each big table, and any Seq Scan or count(*) over them.

Part (b) lives in bench/growth_pages.py. Bounded (sizes and a deadline per drain),
loopback only. Results go to stdout and
var/bench/growth-<time>.json; docs/benchmarks.md keeps the record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # `python bench/growth.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from bench.growth_pages import EVENT_TYPE, PageResult, page_line, run_list_part
from bench.machine import machine
from bench.stack import admin_database_url, with_database
from orchestrator import embedded_redis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
OTHER_TYPES = 500
READ_COUNT = 100


# --- the throwaway services ---------------------------------------------------------------------


class Services:
    """A new PostgreSQL database and a new redis-server, removed at the end."""

    def __init__(self, tag: str, admin_url: str | None):
        self.tag = tag
        self.admin_url = admin_url
        self.workdir = Path(tempfile.mkdtemp(prefix="signalbox-growth-"))
        self.database = f"signalbox_growth_{tag}"
        self.cleanups: list = []

    def _admin_url(self) -> str:
        return admin_database_url(self.admin_url, self.cleanups)

    def start(self) -> None:
        process, self.redis_url = embedded_redis.start(
            self.workdir / "redis",
            persist=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.cleanups.append(lambda: (process.terminate(), process.wait(10)))
        admin_url = self._admin_url()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self.cleanups.append(lambda: self._drop(admin_url))
        self.database_url = with_database(admin_url, self.database)

    def _drop(self, admin_url: str) -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )

    def stop(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)


def setup_django(services: Services) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
            "DATABASE_URL": services.database_url,
            "REDIS_URL": services.redis_url,
            "SIGNALBOX_REDIS_PREFIX": f"growth-{services.tag}",
            "DJANGO_DEBUG": "0",
            "SIGNALBOX_LOG_LEVEL": "WARNING",
        }
    )
    os.environ.pop("SIGNALBOX_TEST_DB_NAME", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# --- (a) ingest + match with few and with many workflows ----------------------------------------


def _definition(event_type: str, name: str, filter_: str = "") -> dict:
    trigger = {"event": event_type, **({"filter": filter_} if filter_ else {})}
    return {
        "name": name,
        "triggers": [trigger],
        "steps": [{"id": "only", "kind": "log", "config": {"message": "hello"}}],
    }


def publish_few() -> None:
    """Ten workflows through the real publish path."""
    from workflows.authoring.definitions import publish_workflow, put_workflow

    put_workflow(slug="growth-all", raw=_definition(EVENT_TYPE, "every event"))
    put_workflow(
        slug="growth-big-orders",
        raw=_definition(EVENT_TYPE, "big orders", "event.data.amount > 1000.0"),
    )
    for n in range(8):
        put_workflow(slug=f"growth-other-{n}", raw=_definition(f"com.example.other.{n}", "other"))
    for slug in ["growth-all", "growth-big-orders", *(f"growth-other-{n}" for n in range(8))]:
        publish_workflow(slug=slug)


MANY_PREFIX = "many-"


def publish_many(count: int, *, on_bench_type: int = 20) -> float:
    """`count` more published workflows, made in bulk (publishing 10,000 one by one takes
    minutes): a workflow, its published version and its subscription each, as publish makes
    them. `on_bench_type` of them listen to the benchmark type with a filter that does not
    pass; the rest to OTHER_TYPES other types. Returns the seconds it took."""
    from django.db import connection, transaction

    from workflows.catalog.models import TriggerSubscription, Workflow, WorkflowVersion

    started = time.perf_counter()
    with transaction.atomic():
        workflows = Workflow.objects.bulk_create(
            Workflow(slug=f"{MANY_PREFIX}{n}", name=f"many {n}", draft={}) for n in range(count)
        )
        plans = []
        for n, workflow in enumerate(workflows):
            if n < on_bench_type:
                event_type = EVENT_TYPE
                raw = _definition(EVENT_TYPE, "filtered", f'event.data.region == "region-{n}"')
            else:
                event_type = f"com.example.other.{n % OTHER_TYPES}"
                raw = _definition(event_type, "other")
            workflow.draft = raw
            plans.append((workflow, event_type, raw))
        versions = WorkflowVersion.objects.bulk_create(
            WorkflowVersion(workflow=w, number=1, definition=raw) for w, _t, raw in plans
        )
        TriggerSubscription.objects.bulk_create(
            TriggerSubscription(event_type=t, workflow=w, version=v)
            for (w, t, _raw), v in zip(plans, versions, strict=True)
        )
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE workflows_workflow w SET published_version_id = v.id, draft = v.definition
                FROM workflows_workflowversion v
                WHERE v.workflow_id = w.id AND w.slug LIKE %s
                """,
                [f"{MANY_PREFIX}%"],
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE workflows_workflow")
        cursor.execute("ANALYZE workflows_workflowversion")
        cursor.execute("ANALYZE workflows_triggersubscription")
    return time.perf_counter() - started


def unpublish_many() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        where = "SELECT id FROM workflows_workflow WHERE slug LIKE %s"
        like = [f"{MANY_PREFIX}%"]
        cursor.execute(
            f"DELETE FROM workflows_triggersubscription WHERE workflow_id IN ({where})", like
        )
        cursor.execute(
            f"UPDATE workflows_workflow SET published_version_id = NULL WHERE id IN ({where})", like
        )
        cursor.execute(
            f"DELETE FROM workflows_workflowversion WHERE workflow_id IN ({where})", like
        )
        cursor.execute("DELETE FROM workflows_workflow WHERE slug LIKE %s", like)
        cursor.execute("ANALYZE workflows_triggersubscription")


@dataclass
class MatchRound:
    label: str
    workflows: int
    events: int
    ingest_s: float
    match_s: float
    runs: int
    queries_per_read: float
    reads: int
    matched: int
    queries_per_entry: float = 0.0
    # CPU seconds of this process (ingest + match): what the code costs, less disturbed
    # than wall time by whatever else the shared cores run.
    cpu_s: float = 0.0

    @property
    def cpu_ms_per_event(self) -> float:
        return 1000 * self.cpu_s / self.events

    @property
    def ingest_rate(self) -> float:
        return self.events / self.ingest_s

    @property
    def match_rate(self) -> float:
        return self.events / self.match_s

    @property
    def rate(self) -> float:
        return self.events / (self.ingest_s + self.match_s)

    def summary(self) -> dict:
        return {
            **self.__dict__,
            "ingest_events_per_s": round(self.ingest_rate, 1),
            "match_events_per_s": round(self.match_rate, 1),
            "ingest_and_match_events_per_s": round(self.rate, 1),
            "cpu_ms_per_event": round(self.cpu_ms_per_event, 2),
        }


class Drain:
    """What consume_bus does with the bus, minus its loop's waits."""

    def __init__(self, name: str):
        from workflows.events.bus import Consumer

        self.consumer = Consumer(name)

    def run(self, wanted: set[int], *, timeout: float = 300) -> tuple[int, int, int]:
        """Read and match until every event in `wanted` was matched and acknowledged (the
        bus also carries the run events the started runs emit: they are matched too).
        Returns (entries acknowledged, reads, queries in reads)."""
        from django.db import connection

        from workflows.runs.matching import dead_letter_bus_entry, match_events

        queries = [0]

        def count(execute, sql_, params, many, context):
            queries[0] += 1
            return execute(sql_, params, many, context)

        def match(ids: list[int]) -> set[int]:
            done = match_events(event_ids=ids).done
            left.difference_update(done)
            return done

        left = set(wanted)
        acked = reads = 0
        deadline = time.monotonic() + timeout
        with connection.execute_wrapper(count):
            while time.monotonic() < deadline:
                # Until the bus is empty: the run events the new runs emitted are matched
                # in the same round (no worker runs the steps, so nothing more comes).
                deliveries = list(self.consumer.read(block_ms=200 if left else 1, count=READ_COUNT))
                if not deliveries:
                    if left:
                        continue
                    break
                reads += 1
                acked += self.consumer.handle_batch(
                    deliveries,
                    match,
                    max_deliveries=5,
                    on_poison=lambda d, reason: dead_letter_bus_entry(
                        event_id=d.event_id, reason=reason, stream=d.stream, entry_id=d.entry_id
                    ),
                )
        if left:
            raise RuntimeError(
                f"{len(left)} of {len(wanted)} events unmatched after {timeout:.0f} s"
            )
        return acked, reads, queries[0]


def envelopes(tag: str, count: int) -> list:
    from workflows.events.envelope import from_structured

    return [
        from_structured(
            {
                "specversion": "1.0",
                "id": f"{tag}-{n}",
                "source": "/bench/growth",
                "type": EVENT_TYPE,
                "subject": f"order-{n % 64}",
                "datacontenttype": "application/json",
                "data": {"order": n, "amount": 12.5, "currency": "EUR", "region": "eu"},
            }
        )
        for n in range(count)
    ]


def match_round(label: str, drain: Drain, count: int, tag: str) -> MatchRound:
    from workflows.catalog.models import Workflow
    from workflows.runs.matching import ingest_event
    from workflows.runs.models import Run

    batch = envelopes(tag, count)
    cpu = time.process_time()
    began = time.perf_counter()
    wanted = {ingest_event(envelope=envelope, channel="http")[0].pk for envelope in batch}
    ingested = time.perf_counter()
    matched, reads, queries = drain.run(wanted)
    finished = time.perf_counter()  # includes one empty read (1 ms block) at the end
    cpu = time.process_time() - cpu
    return MatchRound(
        label=label,
        workflows=Workflow.objects.filter(published_version__isnull=False).count(),
        events=count,
        ingest_s=ingested - began,
        match_s=finished - ingested,
        runs=Run.objects.filter(event_id__in=wanted).count(),
        queries_per_read=round(queries / max(reads, 1), 1),
        reads=reads,
        matched=matched,
        queries_per_entry=round(queries / max(matched, 1), 1),
        cpu_s=cpu,
    )


FEW = "few"
MANY_OTHER = "many, other types"
MANY_FILTERED = "many, +filtered"


def matching_part(args, tag: str) -> tuple[list[MatchRound], dict]:
    """Alternating rounds: ~10 workflows; 10,000 with none more on the benchmark type;
    10,000 with `args.filtered` of them on the benchmark type behind filters that do not
    pass. The second isolates what the number of workflows costs; the third adds what
    every workflow listening to the type costs (its filter, evaluated per event)."""
    publish_few()
    drain = Drain(f"growth-{tag}")
    rounds: list[MatchRound] = []
    made: list[float] = []
    match_round("warm-up", drain, 200, f"{tag}-w0")

    def measured(label: str, name: str) -> None:
        match_round("warm-up", drain, 50, f"{tag}-w{name}")  # parse the new definitions
        rounds.append(match_round(label, drain, args.events, f"{tag}-{name}"))
        print(f"  {_round_line(rounds[-1])}", flush=True)

    for r in range(args.rounds):
        if r:
            unpublish_many()
        measured(FEW, f"f{r}")
        made.append(publish_many(args.workflows - 10, on_bench_type=0))
        measured(MANY_OTHER, f"m{r}")
        unpublish_many()
        made.append(publish_many(args.workflows - 10, on_bench_type=args.filtered))
        measured(MANY_FILTERED, f"x{r}")

    def median(values):
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def pairs(label, measure):
        """Each round's many/few ratio (measured minutes apart), then their median: slow
        drifts of the machine's load cancel out better than in a ratio of means."""
        few = [measure(x) for x in rounds if x.label == FEW]
        many = [measure(x) for x in rounds if x.label == label]
        return median([m / f for m, f in zip(many, few, strict=True)])

    ratios: dict = {"bulk_publish_s": [round(x, 1) for x in made]}
    for label in (MANY_OTHER, MANY_FILTERED):
        ratios[label] = {
            "ingest": pairs(label, lambda x: x.ingest_rate),
            "match": pairs(label, lambda x: x.match_rate),
            "ingest_and_match": pairs(label, lambda x: x.rate),
            # fewer CPU ms per event is better: few/many, so that >= 0.90 means <= 10% cost
            "cpu": 1 / pairs(label, lambda x: x.cpu_ms_per_event),
        }
    return rounds, ratios


def _round_line(r: MatchRound) -> str:
    return (
        f"{r.label:<20}{r.workflows:>8}{r.events:>8}{r.ingest_rate:>11.1f}{r.match_rate:>11.1f}"
        f"{r.rate:>11.1f}{r.cpu_ms_per_event:>8.2f}{r.queries_per_entry:>8.1f}{r.runs:>7}"
    )


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server for the throwaway database")
    parser.add_argument("--workflows", type=int, default=10_000, help="published workflows")
    parser.add_argument("--events", type=int, default=1_000, help="events per matching round")
    parser.add_argument("--rounds", type=int, default=5, help="few/many rounds, alternating")
    parser.add_argument(
        "--filtered", type=int, default=20, help="of the many, listening to the benchmark type"
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs in the run table")
    parser.add_argument("--sample", type=int, default=50_000, help="runs with steps, journal")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--skip-matching", action="store_true")
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.workflows, args.events, args.rounds = 2_000, 300, 2
        args.runs, args.sample, args.requests = 100_000, 5_000, 10

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tag = uuid.uuid4().hex[:8]
    services = Services(tag, args.database_url)
    print("starting a throwaway PostgreSQL database and redis-server", flush=True)
    report: dict = {"options": vars(args)}
    rounds: list[MatchRound] = []
    ratios: dict = {}
    pages: list[PageResult] = []
    try:
        services.start()
        setup_django(services)
        info = machine(services.database_url, services.redis_url)
        print(f"machine: {json.dumps(info)}", flush=True)
        report["machine"] = info
        if not args.skip_matching:
            print("\ningest + match (events/s; queries per bus read of up to 100 entries):")
            print(
                f"  {'published':<20}{'wf':>8}{'events':>8}{'ingest/s':>11}{'match/s':>11}"
                f"{'both/s':>11}{'cpu ms':>8}{'q/entry':>8}{'runs':>7}"
            )
            rounds, ratios = matching_part(args, tag)
        if not args.skip_runs:
            if args.skip_matching:
                publish_few()
                publish_many(args.workflows - 10, on_bench_type=args.filtered)
            print(f"\nrun list and run page at {args.runs:,} runs (server time, ms):")
            print(
                f"  {'page':<30}{'p50':>9}{'p99':>9}{'cpu p50':>9}{'cpu p99':>9}"
                f"{'queries':>9}{'SQL ms':>9}{'rows':>8}"
            )
            report["runs_loaded"], pages = run_list_part(args, tag)
    finally:
        services.stop()

    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if rounds:
        print("\ningest + match, few vs many published workflows (same run):")
        print(
            f"  {'published':<20}{'wf':>8}{'events':>8}{'ingest/s':>11}{'match/s':>11}"
            f"{'both/s':>11}{'cpu ms':>8}{'q/entry':>8}{'runs':>7}"
        )
        for r in rounds:
            print(f"  {_round_line(r)}")
        for label in (MANY_OTHER, MANY_FILTERED):
            ratio = ratios[label]
            print(
                f"  {label} / few: throughput ingest {ratio['ingest']:.3f},"
                f" match {ratio['match']:.3f}, ingest+match {ratio['ingest_and_match']:.3f};"
                f" CPU per event (few/many) {ratio['cpu']:.3f}"
            )
        print(
            f"  ('{MANY_OTHER}': {args.workflows:,} published, 2 on the benchmark type as in"
            f" 'few'; '{MANY_FILTERED}': {args.filtered} of them moved to the benchmark type"
            " with filters that do not pass. Ratios: medians of each round's pair."
            " Target: >= 0.90, i.e. <= 10% cost)"
        )
    if pages:
        print(f"\npages at {report['runs_loaded']['runs']:,} runs ({args.requests} requests each):")
        print(
            f"  {'page':<30}{'p50 ms':>9}{'p99 ms':>9}{'cpu p50':>9}{'cpu p99':>9}"
            f"{'queries':>9}{'SQL ms':>9}{'rows':>8}"
        )
        for p in pages:
            print(f"  {page_line(p)}")
        print("\nplans (scans of the big tables, from EXPLAIN ANALYZE of every query):")
        for p in pages:
            print(f"  {p.name}: {'; '.join(p.scans) or 'no big table read'}")
        worst = max(p.p50 for p in pages)
        print(f"\nslowest p50: {worst:.1f} ms (target < 100 ms)")
    print(f"load average before/after: {info['load_average']} / {info['load_average_after']}")
    report["matching"] = {"rounds": [r.summary() for r in rounds], "ratios": ratios}
    report["pages"] = [p.summary() for p in pages]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"growth-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
