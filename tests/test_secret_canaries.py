"""Canary secrets through every step kind that can take one, on the real stack (ASGI server,
bus consumer, Celery worker, scheduler): an HTTP header, basic auth and a bearer token
against a loopback server that echoes the request (once answering 200, once 500), an SMTP
password, a python argument marked secret (one function even hands it back encoded), and
a for_each of HTTP calls; an emit_event step forwards an upstream output.

Then every place data rests or is shown is searched for each canary and its base64, hex and
URL encodings: every row of every table in PostgreSQL, every Redis key of this run's prefix
(streams included), the stack's logs, the dashboard pages and API answers, and the frames
of the live WebSockets. None may be found."""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from urllib.parse import quote, quote_plus

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import Client
from websockets.sync.client import connect

from tests.accounts import sign_in
from tests.factories import cloudevent
from tests.http_recorder import Recorder, Reply
from tests.stack import LOGS
from tests.waiting import wait_until
from workflows.events.models import DeadLetter, Event
from workflows.runs.models import Run

CE_JSON = {"Content-Type": "application/cloudevents+json"}
KINDS = ("header", "password", "token", "smtp", "python", "leaky", "loop", "failing")


def encodings(value: str) -> set[str]:
    raw = value.encode()
    forms = {
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        raw.hex(),
        raw.hex().upper(),
        quote(value, safe=""),
        quote_plus(value),
    }
    return forms | {f.rstrip("=") for f in forms}


def find_canaries(text: str, forms: dict[str, str]) -> list[str]:
    return [f"{name} ({form[:12]}…)" for form, name in forms.items() if form in text]


def postgres_dump() -> str:
    """Every row of every table, as PostgreSQL's text form of the row (text, jsonb, bytea…)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        tables = [row[0] for row in cursor.fetchall()]
        parts = []
        for table in tables:
            cursor.execute(f'SELECT t::text FROM "{table}" AS t')
            parts.extend(f"{table}: {row[0]}" for row in cursor.fetchall())
    return "\n".join(parts)


def redis_dump() -> str:
    client = redis.Redis.from_url(settings.REDIS_URL)
    parts = []
    for key in client.scan_iter(match=f"{settings.REDIS_PREFIX}*", count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        parts.append(f"{key!r}: {value!r}")
    client.close()
    return "\n".join(parts)


def stack_logs() -> str:
    prefix = os.environ["SIGNALBOX_REDIS_PREFIX"]
    return "\n".join(p.read_text(errors="replace") for p in LOGS.glob(f"{prefix}-*.log"))


class Frames:
    """Every frame a WebSocket of the real server sends, collected on a thread."""

    def __init__(self, url: str, cookie: str):
        self.frames: list[str] = []
        self.connection = connect(
            url, additional_headers={"Cookie": cookie, "Origin": "http://127.0.0.1"}
        )
        self.socket = self.connection.__enter__()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in self.socket:
                self.frames.append(message if isinstance(message, str) else message.decode())
        except Exception:  # noqa: BLE001 - closed by close() below
            pass

    def close(self) -> None:
        self.connection.__exit__(None, None, None)
        self.thread.join(timeout=10)


def workflow(echo: Recorder, failing: Recorder) -> dict:
    return {
        "name": "Canaries",
        "triggers": [{"event": "com.example.canary"}],
        "steps": [
            {
                "id": "call",
                "kind": "http_request",
                "config": {
                    "url": echo.url + "/call",
                    "headers": {"X-Api-Key": "{{ secrets.c_header }}"},
                    "auth": {"username": "svc", "password": "{{ secrets.c_password }}"},
                    "json": {"order": "{{ event.data.order }}"},
                },
            },
            {
                "id": "bearer",
                "kind": "http_request",
                "config": {"url": echo.url + "/bearer", "auth": {"token": "{{ secrets.c_token }}"}},
            },
            {
                "id": "mail",
                "kind": "send_email",
                "config": {
                    "to": ["ops@example.com"],
                    "subject": "canary",
                    "body": "no secret here",
                    "smtp_username": "relay",
                    "smtp_password": "{{ secrets.c_smtp }}",
                    "timeout_seconds": 5,
                },
            },
            {"id": "mail_noted", "kind": "log", "config": {"message": "mail failed"}},
            {
                "id": "py",
                "kind": "python",
                "config": {
                    "function": "tests.secret_length",
                    "secret_input": {"key": "{{ secrets.c_python }}"},
                },
            },
            {
                "id": "leak",
                "kind": "python",
                "config": {
                    "function": "tests.leaky",
                    "secret_input": {"key": "{{ secrets.c_leaky }}"},
                },
            },
            {
                "id": "loop",
                "kind": "for_each",
                "config": {
                    "items": "[1, 2]",
                    "do": {
                        "kind": "http_request",
                        "config": {
                            "url": echo.url + "/loop/{{ item }}",
                            "headers": {"X-Loop-Key": "{{ secrets.c_loop }}"},
                        },
                    },
                },
            },
            {
                "id": "emit",
                "kind": "emit_event",
                "after": ["call"],
                "config": {
                    "type": "com.example.canary.forwarded",
                    "data": {"echo": "{{ steps.call.output }}"},
                },
            },
            {
                # Last: its unhandled failure ends the run (and dead-letters the step).
                "id": "fails",
                "kind": "http_request",
                "after": ["bearer", "py", "leak", "loop", "emit"],
                "config": {
                    "url": failing.url + "/fails",
                    "headers": {"Authorization": "Bearer {{ secrets.c_failing }}"},
                },
            },
        ],
        "edges": [{"from": "mail", "to": "mail_noted", "port": "failure"}],
    }


@pytest.mark.django_db(transaction=True)
def test_no_canary_secret_is_found_anywhere_after_running_every_secret_capable_step(
    stack, api, caplog
):
    run_id = uuid.uuid4().hex[:10]
    # Characters that URL encoding changes, so that form is a different string to look for.
    canaries = {kind: f"cn@ry/{kind}+{run_id} {uuid.uuid4().hex}" for kind in KINDS}
    forms = {form: kind for kind, value in canaries.items() for form in encodings(value)}
    # What basic auth sends is the encoded pair, not the password alone.
    forms[base64.b64encode(f"svc:{canaries['password']}".encode()).decode()] = "password pair"
    echo, failing = Recorder(), Recorder()
    echo.echo = failing.echo = True
    failing.default = Reply(status=500)
    admin = sign_in(Client(), "canary-admin", "admin")
    cookie = f"sessionid={admin.cookies['sessionid'].value}"
    ws_base = stack.base_url.replace("http://", "ws://")
    live = [Frames(f"{ws_base}/ws/{path}/", cookie) for path in ("runs", "flow", "overview")]
    try:
        for kind, value in canaries.items():
            created = api.post("/api/v1/secrets", json={"name": f"c_{kind}", "value": value})
            assert created.status_code == 201, created.text
        assert api.put("/api/v1/workflows/canaries", json=workflow(echo, failing)).status_code in (
            200,
            201,
        )
        assert api.post("/api/v1/workflows/canaries/publish").status_code == 201
        sent = api.post("/api/v1/events", json=cloudevent("com.example.canary"), headers=CE_JSON)
        assert sent.status_code == 202, sent.text

        run = wait_until(
            lambda: Run.objects.filter(workflow__slug="canaries", status="failed").first(),
            timeout=60,
            message="the canary run to finish",
        )
        # The steps really used their secrets: the servers saw them.
        seen = json.dumps([r.headers for r in echo.requests + failing.requests])
        assert canaries["header"] in seen and canaries["token"] in seen
        assert canaries["loop"] in seen and canaries["failing"] in seen
        steps = {s.step_id: s for s in run.steps.all()}
        assert steps["mail"].status == "succeeded", steps["mail"].error
        assert (b"relay", canaries["smtp"].encode()) in stack.mail.logins
        assert steps["py"].output == {"length": len(canaries["python"]), "named": ["c_python"]}
        assert steps["fails"].status == "failed" and steps["fails"].error_code == "http.500"
        assert steps["call"].status == "succeeded" and steps["emit"].status == "succeeded"
        wait_until(
            lambda: DeadLetter.objects.filter(run=run).exists(),
            timeout=30,
            message="the failed step's dead letter",
        )
        # The run's own socket, opened now, sends its snapshot.
        detail = Frames(f"{ws_base}/ws/runs/{run.pk}/", cookie)
        live.append(detail)
        wait_until(lambda: detail.frames, timeout=15, message="the run socket's snapshot")
        wait_until(
            lambda: any(f"/runs/{run.pk}/" in f for f in live[0].frames),
            timeout=15,
            message="the run list socket to show the run",
        )

        emitted = Event.objects.get(type="com.example.canary.forwarded")
        letters = list(DeadLetter.objects.filter(run=run).values_list("pk", flat=True))
        pages = [
            f"/runs/{run.pk}/",
            f"/runs/{run.pk}/recovery/",
            "/runs/",
            f"/events/{run.event_id}/",
            f"/events/{emitted.pk}/",
            "/events/",
            "/dead-letters/",
            *[f"/dead-letters/{pk}/" for pk in letters],
            "/audit/",
            "/secrets/",
            "/flow/",
            "/workflows/canaries/edit/",
        ]
        html = []
        for page in pages:
            response = admin.get(page)
            assert response.status_code == 200, page
            html.append(response.text)
        answers = [
            api.get(path).text
            for path in (
                f"/api/v1/runs/{run.pk}",
                f"/api/v1/events/{run.event_id}",
                f"/api/v1/events/{emitted.pk}",
                "/api/v1/dead-letters",
                "/api/v1/secrets",
                "/api/v1/audit",
                "/api/v1/workflows/canaries/export",
            )
        ]
    finally:
        for socket in live:
            socket.close()
        echo.close()
        failing.close()

    found = {
        "postgres": find_canaries(postgres_dump(), forms),
        "redis": find_canaries(redis_dump(), forms),
        "logs": find_canaries(stack_logs() + caplog.text, forms),
        "html": find_canaries("\n".join(html), forms),
        "api": find_canaries("\n".join(answers), forms),
        "frames": find_canaries("\n".join(f for s in live for f in s.frames), forms),
    }
    assert found == {place: [] for place in found}
    # The search itself works: the servers' records hold the canaries it looks for.
    assert find_canaries(seen, forms)
