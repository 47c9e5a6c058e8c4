"""/metrics with several web processes and real workers: every web process serves the same
installation-wide figures (ingest by channel and result, step durations by kind, WebSocket
clients of every process, queue depth per queue), and every query of the Grafana dashboard
in deploy/grafana/ names a metric that /metrics serves."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from orchestrator.embedded_redis import free_port
from tests.factories import cloudevent, definition, http_step, log_step
from tests.ops_processes import PYTHON, forget, private_stack, start_web, worker_command
from tests.test_dashboard_sockets import session_cookie
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow
from workflows.events.envelope import from_structured
from workflows.events.models import DeadLetter
from workflows.infra import circuit
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "signalbox.json"
METRIC = re.compile(r"\bsignalbox_[a-z0-9_]+\b")
STRUCTURED = {"Content-Type": "application/cloudevents+json"}


def scrape(base: str, token: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert panels
    out = []
    for panel in panels:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, panel["title"]
        out += [(panel["title"], e) for e in exprs]
    return out


def test_every_dashboard_query_names_a_signalbox_metric():
    for title, expr in dashboard_queries():
        assert METRIC.search(expr), f"{title}: {expr}"


@pytest.fixture
def running(settings, recorder, transactional_db):
    stack = private_stack("metrics", SIGNALBOX_STEP_HEARTBEAT_TIMEOUT_SECONDS="10")
    prefix = stack.env["SIGNALBOX_REDIS_PREFIX"]
    settings.REDIS_PREFIX = prefix  # this process reads and writes the processes' Redis keys
    put_workflow(
        slug="metered",
        raw=definition(log_step("note"), http_step("call", f"{recorder.url}/hook")),
    )
    publish_workflow(slug="metered")
    stack.start("bus", [PYTHON, "manage.py", "consume_bus"])
    stack.start("worker", worker_command(stack, "metrics"))
    stack.start("scheduler", [PYTHON, "manage.py", "scheduler", "--interval", "0.2"])
    try:
        webs = [start_web(stack, f"web{i}", free_port()) for i in (1, 2)]
        yield stack, webs
    finally:
        stack.stop()
        forget(prefix)


def test_every_web_process_serves_the_whole_installations_figures(running):
    _stack, (one, two) = running
    _token, token = create_api_token(name="metrics", role="admin")
    auth = {"Authorization": f"Bearer {token}"}
    event = cloudevent(id="metered-1")
    assert (
        httpx.post(f"{one}/api/v1/events", json=event, headers={**auth, **STRUCTURED}).status_code
        == 202
    )
    assert (
        httpx.post(f"{two}/api/v1/events", json=event, headers={**auth, **STRUCTURED}).status_code
        == 200
    )
    bad = httpx.post(f"{one}/api/v1/events", content=b"{", headers={**auth, **STRUCTURED})
    assert bad.status_code == 400
    wait_until(
        lambda: Run.objects.filter(workflow__slug="metered", status="succeeded").exists(),
        timeout=90,
        message="the run to succeed",
    )

    ingest = "signalbox_ingest_total"
    steps = "signalbox_step_duration_seconds_count"

    def same_figures():
        a, b = scrape(one, token), scrape(two, token)
        wanted = {
            (ingest, (("channel", "http"), ("result", "accepted"))): 1,
            (ingest, (("channel", "http"), ("result", "duplicate"))): 1,
            (ingest, (("channel", "http"), ("result", "rejected"))): 1,
            (steps, (("kind", "log"), ("outcome", "succeeded"))): 1,
            (steps, (("kind", "http_request"), ("outcome", "succeeded"))): 1,
        }
        return all(a.get(k) == b.get(k) == v for k, v in wanted.items()) and (a, b)

    a, _b = wait_until(same_figures, timeout=60, message="both web processes to agree")
    for queue in ("signalbox", "steps.fast", "steps.io"):
        assert ("signalbox_queue_depth", (("queue", queue),)) in a
    le = (("kind", "http_request"), ("le", "+Inf"), ("outcome", "succeeded"))
    assert a[("signalbox_step_duration_seconds_bucket", le)] == 1

    # A socket on each web process: each process counts the other's too.
    cookie = session_cookie(role="viewer").decode()

    async def sockets():
        async def opened(base, path):
            url = base.replace("http://", "ws://") + path
            return await connect(url, additional_headers={"Cookie": cookie, "Origin": base})

        clients = "signalbox_websocket_clients"
        runs_page, overview_page = (
            (clients, (("page", "runs"),)),
            (clients, (("page", "overview"),)),
        )
        first = await opened(one, "/ws/runs/")
        second = await opened(two, "/ws/overview/")

        def both(want):
            def check():
                a, b = scrape(one, token), scrape(two, token)
                return all(
                    a.get(k, 0) == b.get(k, 0) == n
                    for k, n in zip((runs_page, overview_page), want, strict=True)
                )

            return check

        await asyncio.to_thread(wait_until, both((1, 1)), timeout=30, message="2 sockets")
        await second.close()
        await asyncio.to_thread(wait_until, both((1, 0)), timeout=30, message="1 socket")
        await first.close()

    asyncio.run(sockets())

    # Figures that need a state to show: a breaker open, a dead letter, a run in flight.
    host = "127.0.0.1:1"
    for _ in range(circuit.failure_threshold()):
        circuit.failed(circuit.acquire(host), "connect")
    DeadLetter.objects.create(kind="step", reason="exhausted", payload={})
    workflow = Workflow.objects.get(slug="metered")
    Run.objects.create(
        workflow=workflow,
        version=workflow.versions.latest("number"),
        event=ingest_event(
            envelope=from_structured(cloudevent(type_="com.example.unheard")), publish=False
        )[0],
        status="running",
    )
    served = {name for name, _labels in scrape(one, token)}
    for title, expr in dashboard_queries():
        for name in METRIC.findall(expr):
            assert name in served, f"panel {title!r} queries {name}, not in /metrics"
