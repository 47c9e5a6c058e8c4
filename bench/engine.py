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
runs/s = N / (first accepted -> last seen done), and p50/p99 of accepted -> seen done.
"Seen done" is when a thread of this process learns that the run is done, one hop after
its end is durable, on both sides: for Signalbox a NOTIFY that PostgreSQL delivers once the
transaction finishing the run commits (a trigger in the throwaway database), for the
baseline a message its last task pushes to Redis. (Until 2026-12-07 Signalbox's end was
Run.finished_at, stamped before the run's last writes and its commit, against the
baseline task's own clock: the commit was left out on our side only. That figure is kept
in the breakdown as "->finished_at".)
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
import contextlib
import json
import os
import sys
import time
import uuid
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path

if __package__ in (None, ""):  # `python bench/engine.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine_clients import WARM_UP_SHAPES, Baseline, Signalbox, warm_up
from bench.engine_profile import profile_chain
from bench.engine_report import (
    Measurement,
    per_step,
    print_breakdowns,
    print_profile,
    print_table,
    ratios,
    twin,
)
from bench.engine_shapes import CELERY, SHAPES, SIGNALBOX
from bench.engine_stack import EngineStack
from bench.machine import git_commit, machine
from bench.stack import OUT, ROOT
from orchestrator.servers import bus_consumers


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
    signalbox = baseline = None
    try:
        stack.start()
        info = machine(stack.database_url, stack.redis_url)
        info["commit"] = git_commit()
        for package in ("celery", "kombu", "channels_redis"):
            with contextlib.suppress(Exception):
                info[package] = package_version(package)
        print(f"machine: {json.dumps(info)}", flush=True)
        signalbox, baseline = Signalbox(stack, tag), Baseline(stack, tag)
        # The warm-up's shapes too: without a workflow listening, its runs never start
        # (`--shapes 1-step` alone waited out the warm-up's timeout and failed).
        signalbox.publish([*shapes, *WARM_UP_SHAPES])
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
        # The done listeners stop before the stack drops the database under them.
        for client in (signalbox, baseline):
            if client is not None:
                client.seen.close()
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
                        **(ratios(m, twin(measurements, m)) if m.system == SIGNALBOX else {}),
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


if __name__ == "__main__":
    sys.exit(main())
