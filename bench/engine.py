"""Engine benchmark: runs/s and latency from event accepted to run finished, beside bare Celery.

    python -m bench.engine            # its own throwaway stack; a few minutes on 2 cores
    python -m bench.engine --quick    # fewer runs per shape (a smoke run, about a minute)
    python -m bench.engine --workers 2 --no-profile

The stack: a new database on the local PostgreSQL server (DATABASE_URL, TEST_DATABASE_URL or
postgresql://postgres@127.0.0.1:5432/postgres), migrated; a unique key prefix on the local
Redis (REDIS_URL or redis://127.0.0.1:6379/0); the bus consumers (--bus-consumers, by default
as many as `make run` starts on PostgreSQL) and the scheduler; one Celery worker (prefork,
--concurrency 1, then 2). The "cpu/run" columns: CPU time (/proc) of all those processes while
a shape ran, per run; the baseline's is its worker's alone. No web server: events are
accepted by the ingest service inside this process, "accepted" being the Event row's
received_at.

Shapes (light step = `log` or `transform`): 1 step; a chain of 3; a start step, 100 parallel
steps and a join; a chain of 40. For each shape and worker count, N runs are sent at once:
runs/s = N / (first accepted -> last finished), and p50/p99 of accepted -> Run.finished_at.
The chain of 40 is also run alone, one run at a time (the shape of a published orchestrator
benchmark, in which the fastest peers take 1.2-3 s on 2 vCPUs), and so is the 1 step (its
latency with nothing queued ahead: the 10 sent at once also measure the queue they form).

The bus consumer runs the light steps of the runs it starts itself, in the transaction that
creates each run (within its budget per read): a light run may finish with no Celery hop,
and the "step hop" column then mixes the consumer's steps with the workers'. To measure the
workers' path alone, run with SIGNALBOX_BUS_INLINE_STEPS=0. Before each Signalbox pass the
worker must answer a ping (light warm-up runs no longer prove it is up).

Baseline, in the same run on the same Redis: bench/engine_baseline.py, a plain Celery app
with no-op tasks under its own key prefix, sent the same shapes (a `celery.chain` of as many
no-ops; a group of 100 no-ops counting in Redis, the last one triggering the join). Our
per-step overhead against it is the figure we track.

Last, unless --no-profile, one chain of 40 is executed inside this process with timers around
the parts of a step (no Celery hop: execute_step is called as a worker task would, and runs
the light chain itself, a transaction per step), to show where a step's time goes.

Results go to stdout and var/bench/engine-<time>.json; docs/benchmarks.md keeps the record.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/engine.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import redis
from psycopg import sql

from bench.ingest import (
    DEFAULT_DATABASE_URL,
    OUT,
    ROOT,
    machine,
    percentile,
    postgres_answers,
    with_database,
)
from orchestrator import embedded_redis
from orchestrator.servers import bus_consumers

SIGNALBOX = "signalbox"
CELERY = "celery"
SOURCE = "/bench/engine"
EVENT_TYPE_PREFIX = "com.example.bench.engine."
FAN_WIDTH = 100


# --- the workflows and their baseline twins ---------------------------------------------------


def light_step(step_id: str, index: int, after: list[str]) -> dict:
    """`log` and `transform` in turn, each rendering a small template, as real light steps do."""
    step: dict[str, Any] = {"id": step_id}
    if index % 2:
        step["kind"] = "transform"
        step["config"] = {"output": {"order": "{{ event.data.order }}", "step": index}}
    else:
        step["kind"] = "log"
        step["config"] = {"message": f"step {index} of run {{{{ run.id }}}}"}
    if after:
        step["after"] = after
    return step


def chain_definition(name: str, length: int) -> list[dict]:
    ids = [f"s{index:02d}" for index in range(1, length + 1)]
    return [light_step(step_id, index, ids[index - 1 : index]) for index, step_id in enumerate(ids)]


def fan_out_definition(width: int) -> list[dict]:
    branches = [f"b{index:03d}" for index in range(width)]
    return [
        light_step("start", 0, []),
        *(light_step(step_id, index + 1, ["start"]) for index, step_id in enumerate(branches)),
        light_step("join", 0, branches),
    ]


def _baseline():
    from bench import engine_baseline  # after the environment names its Redis and prefix

    return engine_baseline


@dataclass(frozen=True)
class Shape:
    key: str
    label: str
    slug: str  # the workflow (shared by the two chain-of-40 measurements)
    steps: int
    runs: int
    quick_runs: int
    steps_definition: Callable[[], list[dict]]
    baseline: Callable[[str], Any]  # run id -> a Celery signature
    one_at_a_time: bool = False

    @property
    def event_type(self) -> str:
        return EVENT_TYPE_PREFIX + self.slug

    def definition(self) -> dict:
        return {
            "name": f"bench: {self.label}",
            "triggers": [{"event": self.event_type}],
            "steps": self.steps_definition(),
        }


SHAPES = [
    Shape("1-step", "1 step", "bench-1-step", 1, 30, 10,
          lambda: chain_definition("1", 1), lambda run: _baseline().chain_of(run, 1)),
    Shape("1-step-alone", "1 step, one at a time", "bench-1-step", 1, 10, 5,
          lambda: chain_definition("1", 1), lambda run: _baseline().chain_of(run, 1),
          one_at_a_time=True),
    Shape("3-step", "chain of 3", "bench-3-step", 3, 30, 10,
          lambda: chain_definition("3", 3), lambda run: _baseline().chain_of(run, 3)),
    Shape("fan-out", f"fan-out {FAN_WIDTH} + join", "bench-fan-out", FAN_WIDTH + 2, 2, 1,
          lambda: fan_out_definition(FAN_WIDTH),
          lambda run: _baseline().fan_out(run, FAN_WIDTH)),
    Shape("chain-40", "chain of 40", "bench-chain-40", 40, 3, 1,
          lambda: chain_definition("40", 40), lambda run: _baseline().chain_of(run, 40)),
    Shape("chain-40-alone", "chain of 40, one at a time", "bench-chain-40", 40, 2, 1,
          lambda: chain_definition("40", 40), lambda run: _baseline().chain_of(run, 40),
          one_at_a_time=True),
]  # fmt: skip


# --- measurements ------------------------------------------------------------------------------


@dataclass
class Measurement:
    system: str  # SIGNALBOX or CELERY
    shape: str
    workers: int
    runs: int
    steps: int  # per run
    seconds: float  # first accepted -> last finished
    latencies_ms: list[float] = field(repr=False)
    failed: int = 0
    note: str = ""
    breakdown: dict[str, float] = field(default_factory=dict)
    # CPU of the stack's processes (bus consumers, scheduler, worker pool) per run while
    # the shape ran; the baseline's counts only its worker (nothing else works for it).
    cpu_ms_per_run: float = 0.0

    @property
    def finished(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0

    @property
    def steps_rate(self) -> float:
        return self.rate * self.steps

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def summary(self) -> dict:
        data = asdict(self)
        data["latencies_ms"] = [round(x, 1) for x in self.latencies_ms]
        return {
            **data,
            "runs_per_s": round(self.rate, 2),
            "steps_per_s": round(self.steps_rate, 1),
            "p50_ms": round(self.p50, 1),
            "p99_ms": round(self.p99, 1),
            "cpu_ms_per_run": self.cpu_ms_per_run,
        }


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ms(later, earlier) -> float:
    return (later - earlier).total_seconds() * 1000


def wait_until(done: Callable[[], bool], *, timeout: float, alive: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        alive()
        time.sleep(0.05)
    return done()


class Signalbox:
    """Send events through the ingest service here; read the runs back from the database."""

    def __init__(self, stack: EngineStack, tag: str):
        self.stack = stack
        self.tag = tag

    def publish(self, shapes: Iterable[Shape]) -> None:
        from workflows.authoring.definitions import publish_workflow, put_workflow

        for shape in {s.slug: s for s in shapes}.values():
            put_workflow(slug=shape.slug, raw=shape.definition())
            publish_workflow(slug=shape.slug, note="bench/engine")

    def send(self, shape: Shape, label: str, numbers: Iterable[int]) -> list[int]:
        from workflows.events.envelope import Envelope
        from workflows.runs.matching import ingest_event

        ids = []
        for n in numbers:
            event, _created = ingest_event(
                envelope=Envelope(
                    id=f"{self.tag}-{label}-{n}",
                    source=SOURCE,
                    type=shape.event_type,
                    data={"order": n},
                )
            )
            ids.append(event.pk)
        return ids

    def wait_for_worker(self, timeout: float) -> None:
        """Until the worker started last answers a ping, then send each of its processes a
        no-op step task (an attempt that does not exist): imports and a connection."""
        from orchestrator.celery import app
        from workflows.tasks import execute_step_task

        name = f"{self.stack.worker}-{self.stack.tag}@"

        def answered() -> bool:
            replies = app.control.ping(timeout=0.5)
            return any(host.startswith(name) for reply in replies for host in reply)

        if not wait_until(answered, timeout=timeout, alive=self.stack.check_alive):
            raise RuntimeError(f"the worker {name} did not answer a ping in {timeout:.0f} s")
        for _ in range(4):
            execute_step_task.delay(0)

    def wait(self, event_ids: list[int], timeout: float) -> bool:
        from workflows.core.states import TERMINAL_RUN
        from workflows.runs.models import Run

        def done() -> bool:
            finished = Run.objects.filter(event_id__in=event_ids, status__in=TERMINAL_RUN)
            return finished.count() >= len(event_ids)

        return wait_until(done, timeout=timeout, alive=self.stack.check_alive)

    def measure(self, shape: Shape, workers: int, runs: int, label: str) -> Measurement:
        timeout = 120 + 1.0 * runs * shape.steps  # a safety net, far above a normal run
        event_ids: list[int] = []
        complete = True
        if shape.one_at_a_time:
            for n in range(runs):
                batch = self.send(shape, label, [n])
                event_ids += batch
                complete = self.wait(batch, timeout) and complete
        else:
            event_ids = self.send(shape, label, range(runs))
            complete = self.wait(event_ids, timeout)
        return self.result(shape, workers, event_ids, complete, timeout)

    def result(
        self, shape: Shape, workers: int, event_ids: list[int], complete: bool, timeout: float
    ) -> Measurement:
        from workflows.core.states import RunStatus
        from workflows.events.models import Event
        from workflows.runs.models import Run, StepRun

        received = dict(Event.objects.filter(pk__in=event_ids).values_list("pk", "received_at"))
        runs = list(
            Run.objects.filter(event_id__in=event_ids, finished_at__isnull=False).values_list(
                "pk", "event_id", "status", "created_at", "finished_at"
            )
        )
        latencies = [ms(finished, received[event]) for _pk, event, _s, _c, finished in runs]
        first, last = min(received.values()), max((r[4] for r in runs), default=None)
        steps = list(
            StepRun.objects.filter(run_id__in=[r[0] for r in runs]).values_list(
                "run_id", "enqueued_at", "started_at", "finished_at"
            )
        )
        first_start: dict[int, Any] = {}
        for run_id, _enqueued, started, _finished in steps:
            if started and (run_id not in first_start or started < first_start[run_id]):
                first_start[run_id] = started
        created = {pk: (received[event], created) for pk, event, _s, created, _f in runs}
        breakdown = {
            # ingest commit -> bus -> consumer matched the event and created the run
            "accepted_to_run_created_ms": median(ms(c, r) for r, c in created.values()),
            "accepted_to_first_step_started_ms": median(
                ms(started, created[pk][0]) for pk, started in first_start.items()
            ),
            # the Celery hop: step row written (enqueue on commit) -> a worker claimed it
            "step_enqueued_to_started_ms": median(ms(s, e) for _r, e, s, _f in steps if e and s),
            # claimed -> result recorded: journal, context, the step itself, the result
            "step_started_to_finished_ms": median(ms(f, s) for _r, _e, s, f in steps if s and f),
        }
        failed = sum(1 for r in runs if r[2] != RunStatus.SUCCEEDED)
        note = "" if complete else f"{len(runs)} of {len(event_ids)} finished in {timeout:.0f}s"
        if failed:
            note = f"{failed} run(s) did not succeed; " + note
        return Measurement(
            SIGNALBOX,
            shape.key,
            workers,
            len(event_ids),
            shape.steps,
            (last - first).total_seconds() if last else 0.0,
            latencies,
            failed,
            note,
            {k: round(v, 2) for k, v in breakdown.items()},
        )


class Baseline:
    """Send the same shapes to the plain Celery app; its tasks record finishes in Redis."""

    def __init__(self, stack: EngineStack, tag: str):
        self.stack = stack
        self.tag = tag

    def send(self, shape: Shape, label: str, numbers: Iterable[int]) -> dict[str, float]:
        signatures = {f"{self.tag}-{label}-{n}": None for n in numbers}
        for run in signatures:
            signatures[run] = shape.baseline(run)  # built before the clock starts
        sent = {}
        for run, signature in signatures.items():
            sent[run] = time.time()
            signature.apply_async()
        return sent

    def finished(self, runs: Iterable[str]) -> dict[str, float]:
        engine_baseline = _baseline()
        runs = list(runs)
        values = engine_baseline._redis().hmget(engine_baseline.finished_key(), runs)
        return {run: float(value) for run, value in zip(runs, values, strict=True) if value}

    def wait(self, runs: list[str], timeout: float) -> bool:
        return wait_until(
            lambda: len(self.finished(runs)) >= len(runs),
            timeout=timeout,
            alive=self.stack.check_alive,
        )

    def measure(self, shape: Shape, workers: int, runs: int, label: str) -> Measurement:
        timeout = 60 + 0.1 * runs * shape.steps
        sent: dict[str, float] = {}
        complete = True
        if shape.one_at_a_time:
            for n in range(runs):
                batch = self.send(shape, label, [n])
                sent.update(batch)
                complete = self.wait(list(batch), timeout) and complete
        else:
            sent = self.send(shape, label, range(runs))
            complete = self.wait(list(sent), timeout)
        finished = self.finished(sent)
        latencies = [(finished[run] - sent[run]) * 1000 for run in finished]
        seconds = max(finished.values()) - min(sent.values()) if finished else 0.0
        note = "" if complete else f"{len(finished)} of {len(sent)} finished in {timeout:.0f}s"
        return Measurement(CELERY, shape.key, workers, len(sent), shape.steps, seconds,
                           latencies, note=note)  # fmt: skip


# --- where a step's time goes ----------------------------------------------------------------


def profile_chain(signalbox: Signalbox, shape: Shape, stack: EngineStack) -> dict:
    """Run one chain's steps here, one after another, timing the parts of each step.

    No worker is running: the bus consumer creates the run (and runs its first light steps
    itself, within its budget), then this loop calls execute_step for every queued attempt
    left as a worker task would (the Celery messages sent on
    commit are left unread); a light chain runs inside one such call, a step per
    transaction. Parts nest: write_result includes advance_locked; SQL, COMMIT, Channels
    pushes and Celery sends are counted wherever they happen. A step is counted at each
    lock_attempt (every step's transaction starts with it).
    """
    from celery.app.task import Task
    from django.db import DEFAULT_DB_ALIAS, connection, connections

    from workflows.core.states import StepStatus
    from workflows.live import notify
    from workflows.runs import advance as runs
    from workflows.runs import execution
    from workflows.runs.models import Run, StepRun
    from workflows.steps import registry

    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    statements: dict[str, int] = collections.defaultdict(int)  # SQL issued inside each part
    inside: list[str] = []  # the innermost part running now (empty: between steps)
    one_step: list[str] = []  # the statements of one step in the middle of the chain
    steps = [0]  # steps begun (each begins with lock_attempt)

    def timed(part: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            inside.append(part)
            try:
                return function(*args, **kwargs)
            finally:
                inside.pop()
                totals[part] += time.perf_counter() - began
                counts[part] += 1

        return wrapper

    def sql_timer(execute, query, params, many, context):
        if not inside:  # this loop's own query for the next step
            return execute(query, params, many, context)
        began = time.perf_counter()
        try:
            return execute(query, params, many, context)
        finally:
            totals["SQL statements"] += time.perf_counter() - began
            counts["SQL statements"] += 1
            statements[inside[-1]] += 1
            if steps[0] == shape.steps // 2:
                one_step.append(f"[{inside[-1].split(' (')[0].strip()}] {sql_shape(query)}")

    def counting(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            steps[0] += 1
            return function(*args, **kwargs)

        return wrapper

    patches: list[tuple[Any, str, Any]] = [
        (execution, "lock_attempt", "lock_attempt (attempt + run, run row locked)"),
        (execution, "claim", "claim (conditional UPDATE; side-effecting kinds)"),
        (execution, "mark_started", "mark_started (journal step.started, push)"),
        (execution, "build_context", "build_context"),
        (execution, "upstream_outputs", "upstream_outputs (referenced steps only)"),
        (execution, "secret_values", "secret_values (referenced secrets only)"),
        (execution, "record_result", "record_result (txn: result, journal, advance)"),
        (execution, "write_result", "write_result (claim+result, journal, advance)"),
        (runs, "advance_locked", "  advance_locked (decide, next step, run events)"),
        (runs, "emit_run_events", "  emit_run_events"),
        (notify, "_send", "Channels push (a group_send to 2 groups)"),
        (Task, "apply_async", "Celery send (next step, run finished)"),
        (type(connections[DEFAULT_DB_ALIAS]), "_commit", "COMMIT"),
    ]
    for kind in ("log", "transform"):
        patches.append((type(registry.get(kind)), "execute", f"step kind {kind}"))
    # The code measured moves on: a part that is gone is left out rather than failing.
    patches = [(owner, name, part) for owner, name, part in patches if hasattr(owner, name)]
    # (owner, name, the owner's own attribute or None when it is inherited)
    originals = [(owner, name, owner.__dict__.get(name)) for owner, name, _part in patches]

    event_ids = signalbox.send(shape, "profile", [0])

    def run_created() -> bool:
        return Run.objects.filter(event_id__in=event_ids).exists()

    if not wait_until(run_created, timeout=60, alive=stack.check_alive):
        return {"note": "the bus consumer did not create the run"}
    run = Run.objects.get(event_id=event_ids[0])
    began = time.perf_counter()
    try:
        for owner, name, part in patches:
            setattr(owner, name, timed(part, getattr(owner, name)))
        execution.lock_attempt = counting(execution.lock_attempt)
        with connection.execute_wrapper(sql_timer):
            while True:
                queued = StepRun.objects.filter(run=run, status=StepStatus.QUEUED).order_by("id")
                step_run_id = queued.values_list("pk", flat=True).first()
                if step_run_id is None:
                    break
                # Counted once per task: workers keep their connection between tasks now, but
                # a task may be the first on a new one (CONN_MAX_AGE, a recycled process).
                connections.close_all()
                t0 = time.perf_counter()
                connection.ensure_connection()
                totals["new database connection"] += time.perf_counter() - t0
                counts["new database connection"] += 1
                timed("execute_step (whole task)", execution.execute_step)(
                    step_run_id=step_run_id, worker="bench-profile"
                )
    finally:
        for owner, name, original in originals:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
    elapsed = time.perf_counter() - began
    run.refresh_from_db()
    kinds = [part for _o, _n, part in patches if part.startswith("step kind")]
    totals["step kinds (log/transform)"] = sum(totals.pop(k, 0.0) for k in kinds)
    counts["step kinds (log/transform)"] = sum(counts.pop(k, 0) for k in kinds)
    statements["step kinds (log/transform)"] = sum(statements.pop(k, 0) for k in kinds)
    per_step = {
        part: {
            "ms_per_step": round(totals[part] * 1000 / max(steps[0], 1), 2),
            "calls_per_step": round(counts[part] / max(steps[0], 1), 2),
            "own_sql_per_step": round(statements.get(part, 0) / max(steps[0], 1), 2),
        }
        for part in totals
    }
    return {
        "shape": shape.key,
        "steps": steps[0],
        "run_status": run.status,
        "wall_s": round(elapsed, 3),
        "parts": per_step,
        "sql_of_one_step": one_step,
    }


def sql_shape(query: str) -> str:
    """`SELECT … FROM "workflows_steprun" …` -> `SELECT workflows_steprun`."""
    words = query.replace('"', "").split()
    verb = words[0].upper() if words else "?"
    table = ""
    for marker in ("FROM", "INTO", "UPDATE"):
        if marker in (w.upper() for w in words):
            index = [w.upper() for w in words].index(marker)
            table = words[index + 1] if index + 1 < len(words) else ""
            break
    return f"{verb} {table}".strip()


# --- the throwaway stack -----------------------------------------------------------------------


class EngineStack:
    """A new database, a key prefix on the local Redis, the bus consumer, the scheduler,
    and one Celery worker at a time (Signalbox's or the baseline's)."""

    def __init__(
        self, tag: str, *, database_url: str | None, redis_url: str | None, bus_consumers: int = 1
    ):
        self.tag = tag
        self.bus_consumers = bus_consumers
        self.requested_database_url = database_url
        self.requested_redis_url = redis_url
        self.prefix = f"bench-engine-{tag}"
        self.baseline_prefix = f"{self.prefix}-baseline"
        self.database = f"signalbox_bench_engine_{tag}"
        self.workdir = Path(tempfile.mkdtemp(prefix="signalbox-bench-engine-"))
        self.processes: dict[str, subprocess.Popen] = {}
        self.cleanups: list[Callable[[], Any]] = []
        self.worker: str | None = None
        self.logs: list[str] = []

    def _admin_url(self) -> str:
        candidates = [
            self.requested_database_url,
            os.environ.get("DATABASE_URL"),
            os.environ.get("TEST_DATABASE_URL"),
            DEFAULT_DATABASE_URL,
        ]
        for url in candidates:
            if url and url.startswith(("postgres://", "postgresql://")) and postgres_answers(url):
                return url
        raise RuntimeError(
            "no PostgreSQL server answered; pass --database-url postgresql://user@host:port/db"
        )

    def _redis_url(self) -> str:
        url = self.requested_redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        if embedded_redis.answers(url, timeout=2):
            return url
        print(f"no Redis at {url}; starting a redis-server for this run", flush=True)
        process, url = embedded_redis.start(
            self.workdir / "redis",
            persist=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.cleanups.append(lambda: (process.terminate(), process.wait(10)))
        return url

    def start(self) -> None:
        self.redis_url = self._redis_url()
        self.cleanups.append(self._delete_keys)
        admin_url = self._admin_url()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self.cleanups.append(lambda: self._drop_database(admin_url))
        self.database_url = with_database(admin_url, self.database)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SIGNALBOX_REDIS_PREFIX": self.prefix,
            "BENCH_BASELINE_REDIS_URL": self.redis_url,
            "BENCH_BASELINE_PREFIX": self.baseline_prefix,
            "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
            "DJANGO_DEBUG": "0",
            "SIGNALBOX_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("SIGNALBOX_TEST_DB_NAME", None)
        # This process accepts the events and reads the results: Django against the same
        # database and prefix as the processes below.
        os.environ.update(self.env)
        os.environ.pop("SIGNALBOX_TEST_DB_NAME", None)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        for n in range(1, self.bus_consumers + 1):  # they share the partitions by leases
            self._spawn(
                "bus" if n == 1 else f"bus-{n}",
                [sys.executable, "manage.py", "consume_bus", "--no-external-streams"],
            )
        self._spawn("scheduler", [sys.executable, "manage.py", "scheduler"])
        from workflows.infra import heartbeat

        if not wait_until(
            lambda: bool(heartbeat.last_beat("bus-consumer") and heartbeat.last_beat("scheduler")),
            timeout=120,
            alive=self.check_alive,
        ):
            raise RuntimeError("the bus consumer and the scheduler did not start within 120 s")

    def start_worker(self, system: str, concurrency: int) -> None:
        self.stop_worker()
        app = "orchestrator" if system == SIGNALBOX else "bench.engine_baseline"
        name = f"{system}-worker-{concurrency}"
        self._spawn(name, [
            str(Path(sys.executable).parent / "celery"), "-A", app, "worker",
            "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "WARNING",
            "--hostname", f"{name}-{self.tag}@%h", "--without-gossip", "--without-mingle",
        ])  # fmt: skip
        self.worker = name

    def stop_worker(self) -> None:
        if self.worker is not None:
            self._stop(self.processes.pop(self.worker))
            self.worker = None

    def cpu_seconds(self) -> float:
        """CPU time used so far by the stack's processes and everything they forked (the
        worker's pool): user + system, from /proc, summed over their process groups."""
        groups = {p.pid for p in self.processes.values() if p.poll() is None}
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            # After the name: state ppid pgrp ... utime (11th) stime (12th).
            if int(fields[2]) in groups:
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.log_path(name)}")

    def log_path(self, name: str) -> Path:
        return OUT / f"engine-{self.tag}-{name}.log"

    def _spawn(self, name: str, args: list[str]) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(name), "w")  # noqa: SIM115 - the child keeps it
        self.logs.append(name)
        self.processes[name] = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its children
        )

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _drop_database(self, admin_url: str) -> None:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )

    def _delete_keys(self) -> None:
        # Both prefixes start with self.prefix; the tag makes it unique to this run.
        client = redis.Redis.from_url(self.redis_url)
        batch = []
        for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)

    def stop(self, *, keep_logs: bool = True) -> None:
        self.worker = None
        for process in self.processes.values():
            self._stop(process)
        for name in [] if keep_logs else self.logs:
            self.log_path(name).unlink(missing_ok=True)
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                print(f"cleanup failed: {exc}", file=sys.stderr)
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- the run -----------------------------------------------------------------------------------


def warm_up(system, workers: int, label: str) -> None:
    """Wait for the worker and warm its processes (imports, connections): a few short runs
    at once, so every process of the pool gets some. The big shapes are not warmed: parsing
    their definition once per process costs milliseconds against their seconds."""
    if isinstance(system, Signalbox):
        # The bus consumer runs light runs itself: their finishing says nothing of the
        # worker, which must be up before the clock starts (it takes what passes the
        # consumer's budget).
        system.wait_for_worker(timeout=180)
    pending = []
    for shape in (s for s in SHAPES if s.key in ("1-step", "3-step")):
        count = 3 * workers if shape.steps == 1 else workers
        pending.append((shape, system.send(shape, f"{label}-{shape.key}", range(count))))
    for shape, sent in pending:
        if not system.wait(list(sent), timeout=180):
            raise RuntimeError(f"{label}: warm-up runs of {shape.key} did not finish")


def ratios(ours: Measurement, base: Measurement | None) -> dict[str, float]:
    if base is None or not ours.finished or not base.finished:
        return {}
    return {
        "runs_per_s_baseline_over_ours": round(base.rate / ours.rate, 2) if ours.rate else 0,
        "p50_ours_over_baseline": round(ours.p50 / base.p50, 2) if base.p50 else 0,
        "p99_ours_over_baseline": round(ours.p99 / base.p99, 2) if base.p99 else 0,
    }


def per_step(measurements: list[Measurement]) -> list[dict]:
    """The figure we track: one step's cost, ours against bare Celery.

    Sequential: the chain of 40 run alone, p50 latency / 40 (every hop in line, nothing
    else queued). Saturated: the fan-out's wall time per step (the pool kept busy).
    """
    found = {(m.system, m.shape, m.workers): m for m in measurements}
    rows = []
    for workers in sorted({m.workers for m in measurements}):
        for shape, what in (("chain-40-alone", "sequential"), ("fan-out", "saturated")):
            ours, base = found.get((SIGNALBOX, shape, workers)), found.get((CELERY, shape, workers))
            if not ours or not base or not ours.finished or not base.finished:
                continue
            if what == "sequential":
                our_ms, base_ms = ours.p50 / ours.steps, base.p50 / base.steps
            else:
                our_ms, base_ms = 1000 / ours.steps_rate, 1000 / base.steps_rate
            rows.append({
                "workers": workers, "measure": what, "shape": shape,
                "ours_ms_per_step": round(our_ms, 2), "baseline_ms_per_step": round(base_ms, 2),
                "ratio": round(our_ms / base_ms, 1) if base_ms else None,
            })  # fmt: skip
    return rows


def print_table(measurements: list[Measurement]) -> None:
    found = {(m.system, m.shape, m.workers): m for m in measurements}
    print()
    print(
        f"{'shape':<28}{'w':>2}{'N':>4} |{'runs/s':>8}{'steps/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'cpu/run':>8} |{'runs/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu/run':>8}"
        f" |{'slower':>7}{'p50 x':>7}"
    )
    print(f"{'':<34} |{'Signalbox':^43} |{'bare Celery':^32} |{'ours/baseline':^14}")
    labels = {s.key: s.label for s in SHAPES}
    for m in measurements:
        if m.system != SIGNALBOX:
            continue
        base = found.get((CELERY, m.shape, m.workers))
        r = ratios(m, base)
        line = (
            f"{labels[m.shape]:<28}{m.workers:>2}{m.runs:>4} |{m.rate:>8.2f}{m.steps_rate:>9.1f}"
            f"{m.p50:>9.0f}{m.p99:>9.0f}{m.cpu_ms_per_run:>8.1f} |"
        )
        if base:
            line += (
                f"{base.rate:>8.2f}{base.p50:>8.0f}{base.p99:>8.0f}{base.cpu_ms_per_run:>8.1f} |"
            )
            line += f"{r.get('runs_per_s_baseline_over_ours', 0):>6.1f}x"
            line += f"{r.get('p50_ours_over_baseline', 0):>6.1f}x"
        notes = "; ".join(n for n in (m.note, base.note if base else "") if n)
        print(line + (f"  ({notes})" if notes else ""))


def print_breakdowns(measurements: list[Measurement]) -> None:
    print("\nwhere a run's time goes (Signalbox, medians in ms, from the database's timestamps):")
    print(
        f"{'shape':<28}{'w':>2} |{'accepted->run':>14}{'->1st step':>12}"
        f"{'step hop':>10}{'in step':>9}"
    )
    labels = {s.key: s.label for s in SHAPES}
    for m in measurements:
        if m.system != SIGNALBOX or not m.breakdown:
            continue
        b = m.breakdown
        print(
            f"{labels[m.shape]:<28}{m.workers:>2} |{b['accepted_to_run_created_ms']:>14.1f}"
            f"{b['accepted_to_first_step_started_ms']:>12.1f}"
            f"{b['step_enqueued_to_started_ms']:>10.1f}{b['step_started_to_finished_ms']:>9.1f}"
        )


def print_profile(profile: dict) -> None:
    if not profile.get("parts"):
        print(f"\nprofile: {profile.get('note', 'nothing measured')}")
        return
    print(
        f"\none step's parts, {profile['steps']} steps of a {profile['shape']} run in this "
        f"process (no Celery hop; run {profile['run_status']}):"
    )
    print(f"  {'part':<52}{'ms/step':>8}{'calls':>7}{'own SQL':>9}")
    order = sorted(profile["parts"].items(), key=lambda item: -item[1]["ms_per_step"])
    for part, v in order:
        print(
            f"  {part:<52}{v['ms_per_step']:>8.2f}{v['calls_per_step']:>7.2f}"
            f"{v['own_sql_per_step']:>9.2f}"
        )
    grouped = collections.Counter(profile.get("sql_of_one_step", []))
    print("  SQL of one step in the middle of the chain, [part] statement x count:")
    for statement, count in sorted(grouped.items(), key=lambda item: -item[1]):
        print(f"    {statement} x{count}")


def git_commit() -> str:
    """The commit measured, with "+dirty" when the working tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}+dirty" if dirty.strip() else head  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server for the throwaway database")
    parser.add_argument("--redis-url", help="Redis server (a unique key prefix is used)")
    parser.add_argument("--workers", default="1,2", help="worker processes per pass: 1,2")
    parser.add_argument("--quick", action="store_true", help="fewer runs per shape")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process profile")
    parser.add_argument(
        "--bus-consumers",
        type=int,
        help="bus consumer processes (default: what `make run` starts on PostgreSQL)",
    )
    parser.add_argument(
        "--shapes", default=",".join(s.key for s in SHAPES), help="which shapes, comma-separated"
    )
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    wanted = {s.strip() for s in args.shapes.split(",")}
    shapes = [s for s in SHAPES if s.key in wanted]
    if not shapes or not worker_counts:
        parser.error("nothing to measure")

    tag = uuid.uuid4().hex[:8]
    load_before = [round(x, 2) for x in os.getloadavg()]
    if load_before[0] > (os.cpu_count() or 1):
        print(f"note: load average {load_before[0]} on {os.cpu_count()} CPUs; other work "
              "shares the machine, so absolute numbers will be slow and noisy")  # fmt: skip
    started = time.monotonic()
    print("starting a throwaway stack (database, Redis prefix, bus consumer, scheduler)")
    if args.bus_consumers is None:
        args.bus_consumers = bus_consumers({**os.environ, "DATABASE_URL": "postgresql://"})
    print(f"{args.bus_consumers} bus consumer process(es)")
    stack = EngineStack(
        tag,
        database_url=args.database_url,
        redis_url=args.redis_url,
        bus_consumers=args.bus_consumers,
    )
    measurements: list[Measurement] = []
    profile: dict = {}
    info: dict = {}
    ok = False
    try:
        stack.start()
        info = machine(stack.database_url, stack.redis_url)
        info["commit"] = git_commit()
        for package in ("celery", "kombu", "channels_redis"):
            with contextlib.suppress(Exception):
                info[package] = package_version(package)
        print(f"machine: {json.dumps(info)}", flush=True)
        signalbox, baseline = Signalbox(stack, tag), Baseline(stack, tag)
        signalbox.publish(shapes)
        for workers in worker_counts:
            for system, client in ((SIGNALBOX, signalbox), (CELERY, baseline)):
                print(f"{system}, {workers} worker process(es): warming up ...", flush=True)
                stack.start_worker(system, workers)
                warm_up(client, workers, f"warm-{system}-{workers}")
                for shape in shapes:
                    runs = shape.quick_runs if args.quick else shape.runs
                    print(f"  {shape.label} x {runs} ...", flush=True)
                    cpu_before = stack.cpu_seconds()
                    m = client.measure(shape, workers, runs, f"{system}-{workers}-{shape.key}")
                    m.cpu_ms_per_run = round(
                        (stack.cpu_seconds() - cpu_before) * 1000 / max(1, m.runs), 1
                    )
                    measurements.append(m)
                    if m.note:
                        print(f"    {m.note}", flush=True)
                stack.stop_worker()
        if not args.no_profile:
            chain = next((s for s in SHAPES if s.key == "chain-40"), None)
            if chain is not None:
                print("profiling one chain of 40 in this process ...", flush=True)
                signalbox.publish([chain])
                profile = profile_chain(signalbox, chain, stack)
        ok = not any(m.note for m in measurements)
    finally:
        stack.stop(keep_logs=not ok)  # the processes' logs are kept when something went wrong

    info["load_average"] = load_before
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print_table(measurements)
    steps = per_step(measurements)
    print("\nper-step cost, ours against bare Celery (the figure we track):")
    if not steps:
        print("  (needs the fan-out and chain-40-alone shapes)")
    for row in steps:
        print(
            f"  {row['workers']} worker(s), {row['measure']:<10} ({row['shape']}): "
            f"{row['ours_ms_per_step']:.1f} ms vs {row['baseline_ms_per_step']:.2f} ms"
            f" = {row['ratio']}x"
        )
    print_breakdowns(measurements)
    if profile:
        print_profile(profile)
    print(f"\nload average before/after: {info['load_average']} / {info['load_average_after']}")
    print(f"took {time.monotonic() - started:.0f} s")
    OUT.mkdir(parents=True, exist_ok=True)
    report = OUT / f"engine-{datetime.now():%Y%m%d-%H%M%S}.json"
    report.write_text(
        json.dumps(
            {
                "machine": info,
                "options": vars(args),
                "results": [
                    {
                        **m.summary(),
                        **(ratios(m, _twin(measurements, m)) if m.system == SIGNALBOX else {}),
                    }
                    for m in measurements
                ],
                "per_step": steps,
                "profile": profile,
            },
            indent=2,
            default=str,
        )
    )
    print(f"written to {report.relative_to(ROOT)}")
    if not ok:
        print(f"some runs did not finish or succeed; logs kept in {OUT.relative_to(ROOT)}")
    return 0 if ok else 1


def _twin(measurements: list[Measurement], m: Measurement) -> Measurement | None:
    return next(
        (b for b in measurements
         if b.system == CELERY and b.shape == m.shape and b.workers == m.workers),
        None,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
