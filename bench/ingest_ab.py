"""Two trees' ingest web tiers back to back, beside one durable baseline, in the same run.

    git worktree add --detach ../signalbox-old main && make -C ../signalbox-old .venv/.installed-dev
    .venv/bin/python -m bench.ingest_ab --old ../signalbox-old [--new .] [--rounds 2] [--seconds 8]

Each tree gets its own throwaway stack (bench/stack.py, started from that tree with that
tree's .venv, so a changed dependency counts), with the bus consumer, worker and scheduler
stopped: bench.ingest's "web tier alone". One durable baseline (bench/durable_baseline.py,
gunicorn, 2 sync workers) serves both. Each round measures the baseline, then the two trees
in alternating order, with wrk as bench.ingest does; besides events/s it prints the CPU time
per request of the server's processes, of the stack's PostgreSQL backends and of its
redis-server (from /proc), which moves less than throughput when other work loads the
machine. Loopback only, bounded in time; every stack is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

import psycopg

import bench.stack as stack_module
from bench.ingest_phases import wrk_phase
from bench.stack import Stack


@contextlib.contextmanager
def tree(path: Path):
    """Stack.start() from another tree: its files, its virtualenv."""
    saved = stack_module.ROOT, sys.executable
    stack_module.ROOT, sys.executable = path, str(path / ".venv" / "bin" / "python")
    try:
        yield
    finally:
        stack_module.ROOT, sys.executable = saved


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def process_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat(int(entry))[2]) == pgid:
                    found.append(int(entry))
    return found


def backends(admin_url: str, database: str) -> list[int]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))
        return [pid for (pid,) in rows.fetchall()]


def redis_server(redis_url: str) -> list[int]:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{entry}/cmdline").read_text()
                if "redis-server" in command and port in command:
                    return [int(entry)]
    return []


def measure(name: str, url: str, token, seconds: float, server_pgid: int, stack: Stack):
    """wrk against `url`; returns (result, CPU µs per request: server, PostgreSQL, Redis)."""
    server, redis_pids = process_group(server_pgid), redis_server(stack.redis_url)
    before_pg = backends(stack.admin_database_url, stack.database)
    before = cpu_seconds(server), cpu_seconds(before_pg), cpu_seconds(redis_pids)
    result = wrk_phase(name, url, token=token, seconds=seconds)
    after_pg = backends(stack.admin_database_url, stack.database)
    # Backends that ended meanwhile are lost to the count; a pool keeps them open.
    after = cpu_seconds(server), cpu_seconds(after_pg), cpu_seconds(redis_pids)
    requests = max(1, result.requests)
    per_request = tuple(1e6 * (a - b) / requests for a, b in zip(after, before, strict=True))
    return result, per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, type=Path, help="the tree to compare against")
    parser.add_argument("--new", default=".", type=Path, help="this tree (default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk phase")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tag = uuid.uuid4().hex[:6]
    stacks: dict[str, Stack] = {}
    try:
        for name, path in (("old", args.old.resolve()), ("new", args.new.resolve())):
            stack = stacks[name] = Stack(f"{tag}{name}", None)
            with tree(path):
                stack.start()
            stack.admin_database_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
            stack.stop_processes("bus", "worker", "scheduler")
        first = stacks["old"]
        durable_url = first.start_durable_baseline()
        wrk_phase("warm-up", durable_url, token=None, seconds=2)
        for stack in stacks.values():
            wrk_phase("warm-up", f"{stack.base_url}/api/v1/events", token=stack.token, seconds=3)
        print(f"load average before: {os.getloadavg()}", flush=True)
        for round_ in range(1, args.rounds + 1):
            durable, cpu = measure(
                "durable", durable_url, None, args.seconds,
                first.processes["durable-baseline"].pid, first,
            )  # fmt: skip
            print(
                f"round {round_}: durable baseline {durable.rate:,.0f}/s p99 {durable.p99:.1f} ms"
                f" (CPU µs/request: server {cpu[0]:.0f}, PostgreSQL {cpu[1]:.0f},"
                f" Redis {cpu[2]:.0f})",
                flush=True,
            )
            for name in ("old", "new") if round_ % 2 else ("new", "old"):
                stack = stacks[name]
                result, cpu = measure(
                    name, f"{stack.base_url}/api/v1/events", stack.token, args.seconds,
                    stack.processes["web"].pid, stack,
                )  # fmt: skip
                print(
                    f"  {name}: {result.rate:,.0f}/s = {result.rate / durable.rate:.2f}x,"
                    f" p50 {result.p50:.1f} p99 {result.p99:.1f} ms, {result.errors} errors"
                    f" (CPU µs/request: server {cpu[0]:.0f}, PostgreSQL {cpu[1]:.0f},"
                    f" Redis {cpu[2]:.0f})",
                    flush=True,
                )
            print(f"  load average {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for stack in stacks.values():
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
