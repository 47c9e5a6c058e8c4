"""`manage.py status` against real processes: its exit code says down, degraded or ok, as
a health check reads it."""

from __future__ import annotations

import json
import subprocess

import pytest

from orchestrator import servers
from tests.ops_processes import PYTHON, forget, private_stack, worker_command
from tests.stack import ROOT
from tests.waiting import wait_until


def status(stack, *args: str) -> tuple[int, dict | str]:
    done = subprocess.run(
        [PYTHON, "manage.py", "status", "--timeout", "1", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = json.loads(done.stdout) if "--json" in args else done.stdout + done.stderr
    return done.returncode, out


def levels(report: dict) -> dict[str, str]:
    return {check["name"]: check["level"] for check in report["checks"]}


@pytest.mark.django_db(transaction=True)
def test_status_says_down_then_degraded_then_ok_as_the_processes_come():
    stack = private_stack("status")
    prefix = stack.env["SIGNALBOX_REDIS_PREFIX"]
    try:
        code, report = status(stack, "--json")
        assert code == 2 and report["status"] == "down"
        assert levels(report)["workers"] == "down"
        assert levels(report)["bus-consumer"] == "down"
        assert levels(report)["web"] == "down" and report["web"] == []
        assert levels(report)["database"] == levels(report)["redis"] == "ok"

        # Workers, a bus consumer and two web processes, but no scheduler: working, timers
        # stopped.
        stack.start("worker", worker_command(stack, "status"))
        stack.start("bus", [PYTHON, "manage.py", "consume_bus"])
        stack.start(
            "web", servers.web_command(PYTHON, host="127.0.0.1", port=stack.port, workers=2)
        )
        code, report = wait_until(
            lambda: (found := status(stack, "--json"))[0] == 1 and found,
            timeout=90,
            message="status to say degraded",
        )
        assert report["status"] == "degraded"
        assert [n for n, level in levels(report).items() if level != "ok"] == ["scheduler"]
        assert set(report["routes"]) >= {"steps.fast", "steps.io"}
        # One heartbeat per uvicorn worker process, not one for the server.
        assert len({p["pid"] for p in report["web"]}) == 2
        assert stack.processes["web"].pid not in {p["pid"] for p in report["web"]}

        stack.start("scheduler", [PYTHON, "manage.py", "scheduler", "--interval", "0.2"])
        code, text = wait_until(
            lambda: (found := status(stack))[0] == 0 and found,
            timeout=60,
            message="status to say ok",
        )
        assert "Signalbox is ok" in text and "worker status-" in text
        assert text.count("\n  web ") == 2  # a line per web process

        # A web server stopped takes its heartbeats with it at once, not a TTL later.
        stack.stop("web")
        code, report = status(stack, "--json")
        assert code == 2 and levels(report)["web"] == "down" and report["web"] == []
    finally:
        stack.stop()
        forget(prefix)


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_serves_only_one_queue_leaves_the_others_degraded():
    stack = private_stack("status-queues")
    prefix = stack.env["SIGNALBOX_REDIS_PREFIX"]
    try:
        stack.start("worker", worker_command(stack, "io-only", "steps.io"))
        stack.start("bus", [PYTHON, "manage.py", "consume_bus"])
        stack.start("scheduler", [PYTHON, "manage.py", "scheduler", "--interval", "0.2"])
        stack.start(
            "web", servers.web_command(PYTHON, host="127.0.0.1", port=stack.port, workers=1)
        )
        _code, report = wait_until(
            lambda: (
                (found := status(stack, "--json"))[0] == 1
                and levels(found[1]).get("scheduler") == "ok"
                and levels(found[1]).get("web") == "ok"
                and found
            ),
            timeout=90,
            message="status to say degraded with every process up",
        )
        unserved = sorted(n for n, level in levels(report).items() if level != "ok")
        assert unserved == ["queue signalbox", "queue steps.fast"]
    finally:
        stack.stop()
        forget(prefix)


def test_a_wrong_option_exits_3_with_a_message_not_a_traceback():
    done = subprocess.run(
        [PYTHON, "manage.py", "status", "--max-bus-lag", "many"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert "--max-bus-lag" in done.stderr and "Traceback" not in done.stderr
