"""bench.engine's throwaway stack: a new database, a key prefix on the local Redis, the bus
consumers, the scheduler and one Celery worker at a time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from bench.engine_shapes import SIGNALBOX
from bench.stack import DEFAULT_DATABASE_URL, OUT, ROOT, postgres_answers, with_database
from orchestrator import embedded_redis


def wait_until(done: Callable[[], bool], *, timeout: float, alive: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        alive()
        time.sleep(0.05)
    return done()


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
