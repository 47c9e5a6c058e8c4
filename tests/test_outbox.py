"""Never lost: an event answered 202 reaches the bus even when Redis was away at the time.

The end-to-end test runs a stack of its own (web, worker, bus consumer, scheduler) on its
own database and its own throwaway Redis, so it can kill that Redis and start it again on
the same port, empty, without touching the session's stack or anybody else's Redis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
from django.utils import timezone
from psycopg import sql

from orchestrator.embedded_redis import answers, find_binary, free_port
from tests.factories import cloudevent, definition, http_step, log_step
from tests.stack import ROOT, Stack, make_stack
from tests.waiting import wait_until
from workflows.events import bus
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.infra.redis_client import client
from workflows.runs.matching import ingest_event

CE_JSON = {"Content-Type": "application/cloudevents+json"}


class RestartableRedis:
    """A throwaway redis-server that can be killed and started again on the same port."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> None:
        # The first start picks a free port (and tries another if it was taken meanwhile);
        # a restart must come back on the same one.
        for _attempt in range(1 if self.port else 3):
            port = self.port or free_port()
            self.process = subprocess.Popen(
                [
                    find_binary(),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    "",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_until(
                lambda p=port: self.process.poll() is not None or answers(p),
                timeout=timeout,
                message=f"redis-server on port {port} to answer or exit",
            )
            if self.process.poll() is None:
                self.port = port
                return
        raise RuntimeError(f"redis-server would not start on port {self.port or 'any'}")

    def kill(self) -> None:
        """Go away abruptly, as a crashed server or a lost network does."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        wait_until(lambda: not answers(self.port), timeout=10, message="redis to be gone")


@contextmanager
def throwaway_redis() -> Iterator[RestartableRedis]:
    directory = Path(tempfile.mkdtemp(prefix="signalbox-outbox-redis-"))
    server = RestartableRedis(directory)
    server.start()
    try:
        yield server
    finally:
        if server.process and server.process.poll() is None:
            server.kill()
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def own_database(name: str) -> Iterator[str]:
    """A new, migrated database beside the test database. Its own, so no other stack's
    scheduler relays these events to another Redis."""
    admin_url = os.environ["DATABASE_URL"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def manage(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def lonely_stack():
    """A full stack on its own database and its own restartable Redis:
    (stack, redis server, admin API token, SQL query function)."""
    run = os.environ["SIGNALBOX_TEST_DB_NAME"]
    with throwaway_redis() as redis_server, own_database(f"{run}_outbox") as database:
        stack = make_stack(database)
        stack.env.update(
            REDIS_URL=redis_server.url,
            SIGNALBOX_REDIS_PREFIX=f"{os.environ['SIGNALBOX_REDIS_PREFIX']}-outbox",
            SIGNALBOX_OUTBOX_GRACE_SECONDS="0.5",
            SIGNALBOX_REDELIVER_UNMATCHED_SECONDS="1",
        )
        manage(stack, "migrate", "-v0")
        token = manage(stack, "create_api_token", "outbox-test", "--role", "admin")

        def query(statement: str, *params) -> list[tuple]:
            with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
                return conn.execute(statement, params).fetchall()

        stack.start_all()
        try:
            stack.wait_ready()
            yield stack, redis_server, token, query
        finally:
            stack.stop()


class HeldReply:
    """A loopback HTTP endpoint that answers only when released, so a step (and its Celery
    message, acknowledged late) is in flight at a moment the test chooses."""

    def __init__(self):
        self.arrived, self.release = threading.Event(), threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                held.arrived.set()
                held.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/held"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_events_accepted_while_redis_is_down_are_each_processed_once_when_it_returns(
    lonely_stack,
):
    stack, redis_server, token, query = lonely_stack
    api = httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )
    held = HeldReply()
    workflows = {
        "outbox": definition(log_step("only"), event="com.example.outbox"),
        "in-flight": definition(http_step("call", held.url), event="com.example.slow"),
    }
    for slug, body in workflows.items():
        assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code == 201
        assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201

    def send(type_: str, **attributes) -> int:
        response = api.post("/api/v1/events", json=cloudevent(type_, **attributes), headers=CE_JSON)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def runs_of(event_ids: list[int]) -> list[tuple]:
        return query(
            "SELECT event_id, status FROM workflows_run WHERE event_id = ANY(%s) ORDER BY event_id",
            event_ids,
        )

    def alive() -> None:
        for name, process in stack.processes.items():
            assert process.poll() is None, f"{name} died: {stack.log_tail(name)}"

    # The worker has been consuming before Redis goes away, and one of its tasks is still
    # running (its message not yet acknowledged) when it does: the known trap is a worker
    # that never consumes again after that.
    warm_up = send("com.example.outbox")
    wait_until(
        lambda: runs_of([warm_up]) == [(warm_up, "succeeded")],
        timeout=60,
        message="the warm-up run to succeed",
    )
    slow = send("com.example.slow")
    assert held.arrived.wait(60), "the slow step never started"

    try:
        redis_server.kill()
        held.release.set()
        accepted, slowest = [], 0.0
        for n in range(5):
            started = time.monotonic()
            accepted.append(send("com.example.outbox", data={"n": n}))
            slowest = max(slowest, time.monotonic() - started)
        # Accepted at once: the web process fails fast on the dead Redis, it does not hang.
        assert slowest < 4, f"a POST took {slowest:.1f} s with Redis down"
        assert api.get("/readyz").json()["checks"]["redis"] != "ok"

        stored = query(
            "SELECT id, published_at FROM workflows_event WHERE id = ANY(%s) ORDER BY id",
            accepted,
        )
        assert stored == [(event_id, None) for event_id in sorted(accepted)]
        assert runs_of(accepted) == []
        wait_until(
            lambda: runs_of([slow]) == [(slow, "succeeded")],
            timeout=60,
            message="the in-flight step to finish while Redis is down",
        )
        alive()

        redis_server.start()  # the same port, and empty: no bus, no queues survive
        came_back = time.monotonic()

        def all_succeeded_or_a_process_died():
            if any(process.poll() is not None for process in stack.processes.values()):
                return "died"
            runs = runs_of(accepted)
            return len(runs) == len(accepted) and all(s == "succeeded" for _e, s in runs)

        wait_until(
            all_succeeded_or_a_process_died,
            timeout=90,
            interval=0.25,
            message="every event accepted during the outage to run",
        )
        recovered_in = time.monotonic() - came_back
        alive()
    finally:
        held.close()
    alive()

    assert runs_of(accepted) == [(event_id, "succeeded") for event_id in sorted(accepted)]
    assert query(
        "SELECT count(*) FROM workflows_event WHERE id = ANY(%s) AND published_at IS NOT NULL",
        accepted,
    ) == [(len(accepted),)]
    # One step, one attempt each: nothing ran twice.
    assert query(
        "SELECT r.event_id, count(*) FROM workflows_steprun s "
        "JOIN workflows_run r ON r.id = s.run_id WHERE r.event_id = ANY(%s) "
        "GROUP BY r.event_id ORDER BY r.event_id",
        accepted,
    ) == [(event_id, 1) for event_id in sorted(accepted)]
    print(f"all {len(accepted)} events ran {recovered_in:.1f} s after Redis came back")

    # Published, then lost: the entries are on the bus when Redis restarts empty, before
    # any consumer read them. The relay sees them unmatched on drained partitions.
    stack.stop("bus")
    lost = [send("com.example.outbox", data={"lost": n}) for n in range(3)]
    wait_until(
        lambda: (
            query(
                "SELECT count(*) FROM workflows_event "
                "WHERE id = ANY(%s) AND published_at IS NOT NULL",
                lost,
            )
            == [(len(lost),)]
        ),
        timeout=30,
        message="the events to be on the bus",
    )
    redis_server.kill()
    redis_server.start()
    stack.start("bus", [sys.executable, "manage.py", "consume_bus"])
    wait_until(
        lambda: runs_of(lost) == [(event_id, "succeeded") for event_id in sorted(lost)],
        timeout=90,
        interval=0.25,
        message="the events whose bus entries were lost to run",
    )
    alive()
    # Marked matched once the consumer's read is done, which may be just after a light
    # run it started in that read finished.
    wait_until(
        lambda: (
            query(
                "SELECT count(*) FROM workflows_event "
                "WHERE id = ANY(%s) AND matched_at IS NOT NULL",
                lost,
            )
            == [(len(lost),)]
        ),
        timeout=30,
        message="the events whose bus entries were lost to be marked matched",
    )
    assert query("SELECT count(*) FROM workflows_run WHERE event_id = ANY(%s)", lost) == [
        (len(lost),)
    ]


# --- the relay, in process --------------------------------------------------------------------


@pytest.fixture
def private_bus(settings):
    settings.REDIS_PREFIX = f"{settings.REDIS_PREFIX}-outbox-{os.getpid()}-{time.time_ns()}"
    yield settings
    for name in client().scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000):
        client().delete(name)


def stored(*, published: bool, age_seconds: float) -> Event:
    event = Event.objects.create(source="/tests", ce_id=cloudevent()["id"], type="t")
    Event.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - timedelta(seconds=age_seconds),
        published_at=timezone.now() if published else None,
    )
    return event


def on_the_bus() -> list[int]:
    return sorted(
        int(fields["event"])
        for partition in range(bus.partitions())
        for _entry_id, fields in client().xrange(bus.stream_key(partition))
    )


@pytest.mark.django_db
def test_the_relay_publishes_events_left_unpublished_and_leaves_the_rest_alone(private_bus):
    stranded = [stored(published=False, age_seconds=30) for _ in range(3)]
    already_sent = stored(published=True, age_seconds=30)
    just_in = stored(published=False, age_seconds=0)  # its own commit hook may still run

    assert bus.relay_unpublished(older_than_seconds=2) == 3

    assert on_the_bus() == sorted(e.pk for e in stranded)
    assert not Event.objects.filter(pk__in=[e.pk for e in stranded], published_at=None).exists()
    published_before = Event.objects.get(pk=already_sent.pk).published_at
    assert published_before is not None
    assert Event.objects.get(pk=just_in.pk).published_at is None

    assert bus.relay_unpublished(older_than_seconds=2) == 0  # nothing left: a no-op
    assert on_the_bus() == sorted(e.pk for e in stranded)
    assert Event.objects.get(pk=already_sent.pk).published_at == published_before


@pytest.mark.django_db
def test_with_redis_unreachable_ingest_still_stores_the_event_and_the_relay_waits(
    private_bus, django_capture_on_commit_callbacks
):
    client.cache_clear()
    private_bus.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    try:
        with django_capture_on_commit_callbacks(execute=True):
            event, created = ingest_event(envelope=from_structured(cloudevent()))
        assert created
        Event.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(seconds=30))
        started = time.monotonic()
        assert bus.relay_unpublished(older_than_seconds=2) == 0
        assert time.monotonic() - started < 3  # fails fast, does not hang the scheduler
    finally:
        client.cache_clear()
    event.refresh_from_db()
    assert event.published_at is None

    private_bus.REDIS_URL = os.environ["REDIS_URL"]
    try:
        assert bus.relay_unpublished(older_than_seconds=2) == 1
    finally:
        client.cache_clear()
    assert on_the_bus() == [event.pk]


# --- entries lost from the bus ------------------------------------------------------------


def published(*, age_seconds: float, matched: bool = False) -> Event:
    event = stored(published=True, age_seconds=age_seconds)
    when = timezone.now() - timedelta(seconds=age_seconds)
    Event.objects.filter(pk=event.pk).update(
        published_at=when, matched_at=when if matched else None
    )
    return event


@pytest.mark.django_db
def test_a_partition_is_drained_only_when_its_group_read_and_acknowledged_everything(
    private_bus,
):
    group = private_bus.SIGNALBOX["BUS_GROUP"]
    redis_client = client()
    everything = set(range(bus.partitions()))
    assert bus.caught_up_partitions(redis_client, group) == everything  # no streams at all

    event = published(age_seconds=0)
    partition = bus.partition_for(event)
    assert bus._append([event])
    # The stream exists but no consumer created the group yet: it will read from the start.
    assert partition not in bus.caught_up_partitions(redis_client, group)

    consumer = bus.Consumer("drain-test", group=group)
    assert partition not in bus.caught_up_partitions(redis_client, group)
    deliveries = list(consumer.read(block_ms=100))
    assert [d.event_id for d in deliveries] == [event.pk]
    assert partition not in bus.caught_up_partitions(redis_client, group)  # still pending
    consumer.ack(deliveries[0])
    assert bus.caught_up_partitions(redis_client, group) == everything


@pytest.mark.django_db
def test_events_whose_entries_were_lost_are_published_again_and_only_they(private_bus):
    lost = [published(age_seconds=120) for _ in range(3)]
    matched = published(age_seconds=120, matched=True)
    recent = published(age_seconds=0)  # its entry may still be on its way to a consumer

    # Redis holds no stream: every entry is gone.
    assert bus.relay_unmatched(older_than_seconds=60) == 3
    assert on_the_bus() == sorted(e.pk for e in lost)
    for event in lost:
        event.refresh_from_db()
        assert timezone.now() - event.published_at < timedelta(seconds=30)
    assert Event.objects.get(pk=matched.pk).published_at < timezone.now() - timedelta(seconds=60)

    # Published again just now: not again until the consumers had their chance.
    assert bus.relay_unmatched(older_than_seconds=60) == 0
    assert on_the_bus() == sorted(e.pk for e in lost)
    assert Event.objects.get(pk=recent.pk).matched_at is None


@pytest.mark.django_db
def test_a_backlog_the_consumers_have_not_reached_is_not_published_twice(private_bus):
    group = private_bus.SIGNALBOX["BUS_GROUP"]
    waiting = published(age_seconds=120)
    assert bus._append([waiting])
    bus.ensure_groups(client(), group)  # the group exists and has not read the entry yet

    assert bus.relay_unmatched(older_than_seconds=60) == 0
    assert on_the_bus() == [waiting.pk]


@pytest.mark.django_db
def test_matching_and_dead_lettering_mark_the_event_so_it_is_never_sent_again(private_bus):
    from workflows.runs.matching import dead_letter_bus_entry, match_event

    event, poison = published(age_seconds=120), published(age_seconds=120)
    match_event(event_id=event.pk)
    dead_letter_bus_entry(
        event_id=poison.pk, reason="delivered 6 times", stream="s", entry_id="1-0"
    )

    assert Event.objects.filter(pk__in=[event.pk, poison.pk], matched_at__isnull=True).count() == 0
    assert bus.relay_unmatched(older_than_seconds=60) == 0
    assert on_the_bus() == []
