"""A PostgreSQL and a Redis of the fault suite's own, so it can restart, kill and wipe them
without touching anything else on the machine. Both listen on loopback only."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import psycopg

from orchestrator import embedded_redis
from orchestrator.embedded_redis import free_port
from orchestrator.launcher import die_with_parent
from tests.waiting import wait_until

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class ServiceMissing(RuntimeError):
    pass


class PrivatePostgres:
    """initdb'd into `directory`, on a fixed loopback port across restarts."""

    def __init__(self, directory: Path):
        bins = [d for d in PG_BIN_DIRS if (d / "pg_ctl").exists()]
        if not bins:
            raise ServiceMissing(
                "the fault suite needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin;"
                " apt-get install postgresql) to run a server it may restart"
            )
        self.bin = bins[0]
        self.data = directory / "pgdata"
        self.port = free_port()
        # PostgreSQL refuses to run as root: then it runs as the postgres system user.
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        if self.user:
            args = ["runuser", "-u", self.user, "--", *args]
        return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)

    def init(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        if self.user:
            info = pwd.getpwnam(self.user)
            os.chown(self.data.parent, info.pw_uid, info.pw_gid)
        done = self._as_owner(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"]
        )  # fmt: skip
        if done.returncode:
            raise ServiceMissing(f"initdb failed: {done.stderr.strip()[-500:]}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.data}'\nmax_connections = 200\n"
                "fsync = on\nsynchronous_commit = on\n"
            )
        self.start()

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def start(self) -> None:
        done = self._as_owner(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "log"),
             "-w", "-t", "60", "start"]
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout[-500:]}{done.stderr}")
        wait_until(self.answers, timeout=30, interval=0.1, message="PostgreSQL to answer")

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clean: sessions ended, checkpoint) or `immediate` (a crash: recovery from
        the WAL at the next start)."""
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data.parent, ignore_errors=True)


class PrivateRedis:
    """redis-server with append-only persistence, on a fixed loopback port across restarts."""

    def __init__(self, directory: Path):
        self.dir = directory / "redis"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [embedded_redis.find_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--logfile", str(self.dir / "log"), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )  # fmt: skip
        wait_until(
            lambda: embedded_redis.answers(self.port),
            timeout=30,
            interval=0.1,
            message="Redis to answer",
        )

    def stop(self, mode: str = "clean") -> None:
        """`clean` (SIGTERM: the append-only file is flushed), `kill` (SIGKILL: up to a
        second of writes lost) or `wipe` (SIGKILL, then every file removed: Redis comes back
        empty)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM if mode == "clean" else signal.SIGKILL)
        self.process.wait(30)
        self.process = None
        if mode == "wipe":
            shutil.rmtree(self.dir, ignore_errors=True)

    def destroy(self) -> None:
        self.stop("kill")
        shutil.rmtree(self.dir, ignore_errors=True)
