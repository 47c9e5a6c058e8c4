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
from workflows.infra.redis_client import client

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


def start_web(stack: Stack, name: str, port: int) -> str:
    """One more web process (uvicorn, one worker) on `port`, as `make run` serves it;
    returns its base URL once it answers."""
    import subprocess

    import httpx

    from orchestrator import servers
    from tests.stack import LOGS, ROOT
    from tests.waiting import wait_until

    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{stack.env['SIGNALBOX_REDIS_PREFIX']}-{name}.log", "w")  # noqa: SIM115
    stack.processes[name] = subprocess.Popen(
        servers.web_command(PYTHON, host="127.0.0.1", port=port, workers=1),
        cwd=ROOT,
        env=servers.web_env(stack.env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def answers():
        if stack.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited: {stack.log_tail(name)}")
        return httpx.get(f"{base}/readyz", timeout=5).status_code == 200

    wait_until(answers, timeout=90, interval=0.25, message=f"{name} to answer")
    return base
