"""What a benchmark ran on: the machine, the packages, the servers and the commit measured."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import psycopg
import redis

from bench.stack import ROOT


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
