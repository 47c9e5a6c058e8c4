"""Signalbox processes of one test, on a Redis prefix of their own (a session stack on the
run's prefix, if another test started one, never takes their work), against the run's
test database."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from django.conf import settings

from tests.stack import Stack, make_stack
from workflows.redis_client import client

PYTHON = sys.executable
CELERY = str(Path(PYTHON).parent / "celery")


def private_stack(name: str, **env: str) -> Stack:
    stack = make_stack(settings.DATABASES["default"]["NAME"])
    stack.env["SIGNALBOX_REDIS_PREFIX"] = f"{settings.REDIS_PREFIX}-{name}-{time.time_ns()}"
    stack.env.update(env)
    return stack


def worker_command(stack: Stack, name: str, queues: str | None = None) -> list[str]:
    args = [CELERY, "-A", "orchestrator", "worker", "--loglevel", "INFO", "--concurrency", "1"]
    args += ["--hostname", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    return args + (["-Q", queues] if queues else [])


def forget(prefix: str) -> None:
    for name in client().scan_iter(match=f"{prefix}:*", count=1000):
        client().delete(name)
