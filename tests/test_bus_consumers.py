"""Several bus consumer processes: they share the partitions by Redis leases, one reader per
partition at a time (per-key order), and a dead one's partitions, with the entries it had
read and not acknowledged, pass to the others.

Against the real Redis (a private key prefix per test) and, for the processes, real
`consume_bus` processes on the test database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from orchestrator import servers
from tests.factories import cloudevent, definition, log_step
from tests.stack import LOGS, ROOT, database_url_for
from tests.waiting import wait_until
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events import bus
from workflows.events.bus_leases import PartitionLeases
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.infra.redis_client import client
from workflows.management.commands import consume_bus
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run, StepRun


@pytest.fixture
def bus_settings(settings):
    """A private key prefix and a known bus configuration for one test."""
    settings.REDIS_PREFIX = f"{settings.REDIS_PREFIX}-consumers-{uuid.uuid4().hex[:8]}"
    settings.SIGNALBOX = {
        **settings.SIGNALBOX,
        "BUS_PARTITIONS": 6,
        "BUS_LEASE_MS": 60_000,
        "BUS_CLAIM_IDLE_MS": 60_000,
    }
    yield settings
    redis = client()
    for name in redis.scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000):
        redis.delete(name)


def leases(owner: str, **overrides) -> PartitionLeases:
    held = PartitionLeases(client(), owner)
    for name, value in overrides.items():
        setattr(held, name, value)
    return held


def settle(*members: PartitionLeases, rounds: int = 3) -> None:
    """Refresh every member a few times over (a member gives up its surplus on one refresh,
    another takes it on its next)."""
    for _ in range(rounds):
        for member in members:
            member.refresh()
            assert_disjoint(*members)


def assert_disjoint(*members: PartitionLeases) -> None:
    seen: set[int] = set()
    for member in members:
        assert not seen & member.held, "a partition held by two consumers"
        seen |= member.held


# --- leases -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_consumers_share_the_partitions_evenly_and_never_hold_one_together(bus_settings):
    first = leases("first")
    held, gained = first.refresh()
    assert held == gained == set(range(6))  # alone: every partition

    second, third = leases("second"), leases("third")
    settle(first, second, third)

    assert [len(m.held) for m in (first, second, third)] == [2, 2, 2]
    assert first.held | second.held | third.held == set(range(6))


@pytest.mark.django_db
def test_a_consumer_that_stops_cleanly_hands_its_partitions_over_at_once(bus_settings):
    first, second = leases("first"), leases("second")
    settle(first, second)
    assert len(first.held) == len(second.held) == 3

    theirs = set(first.held)
    first.release()
    held, gained = second.refresh()

    assert held == set(range(6))
    assert gained == theirs
    assert first.held == set()


@pytest.mark.django_db
def test_a_consumer_that_stops_renewing_keeps_its_partitions_until_its_lease_lapses(
    bus_settings,
):
    silent, survivor = leases("silent"), leases("survivor")
    settle(silent, survivor)
    theirs = set(silent.held)

    survivor.refresh()
    assert survivor.held == set(range(6)) - theirs  # a live lease is never taken

    silent.lease_ms = 300  # its last renewal, short: then it falls silent
    silent.refresh()

    wait_until(lambda: survivor.refresh()[0] == set(range(6)), timeout=30,
               message="the silent consumer's partitions to pass to the survivor")  # fmt: skip


# --- taking a partition over ------------------------------------------------------------------


def stored_and_published(count: int, *, subject: str) -> list[Event]:
    events = []
    for _ in range(count):
        event, _created = ingest_event(
            envelope=from_structured(cloudevent("com.example.nobody", subject=subject)),
            publish=False,
        )
        assert bus.publish(event)
        events.append(event)
    assert {bus.partition_for(e) for e in events} == {bus.partition_for(events[0])}
    return events


@pytest.mark.django_db
def test_a_partition_taken_over_from_a_consumer_killed_mid_read_starts_with_what_it_read(
    bus_settings,
):
    bus_settings.SIGNALBOX = {**bus_settings.SIGNALBOX, "BUS_PARTITIONS": 2}
    events = stored_and_published(5, subject="order-1")
    partition = bus.partition_for(events[0])

    dead = bus.Consumer("dies-mid-read")
    dead_leases = leases("dies-mid-read", lease_ms=300)
    dead.assign(dead_leases.refresh()[0])
    read = list(dead.read(block_ms=10, count=3))
    assert [d.event_id for d in read] == [e.pk for e in events[:3]]  # then killed: no ack
    later = stored_and_published(2, subject="order-1")

    survivor = bus.Consumer("survivor")
    survivor.assign(())
    survivor_leases = leases("survivor")

    def taken_over():
        handed = consume_bus.housekeep(survivor, survivor_leases, [])
        return handed if partition in survivor.partitions else None

    handed = wait_until(taken_over, timeout=30, message="the dead consumer's lease to lapse")

    # What the dead consumer had read comes first, at once (no idle time), in order; what
    # it never read follows from the next read.
    assert [d.event_id for d in handed] == [e.pk for e in events[:3]]
    assert all(d.deliveries == 2 for d in handed)
    survivor.ack_many(handed)
    fresh = list(survivor.read(block_ms=10))
    assert [d.event_id for d in fresh] == [e.pk for e in events[3:] + later]


@pytest.mark.django_db
def test_entries_of_partitions_given_away_are_left_pending_for_their_new_reader(bus_settings):
    bus_settings.SIGNALBOX = {**bus_settings.SIGNALBOX, "BUS_PARTITIONS": 2}
    consumer = bus.Consumer("first")
    first = leases("first")
    consumer.assign(first.refresh()[0])
    deliveries = [
        bus.Delivery(bus.stream_key(0), "1-0", 1),
        bus.Delivery(bus.stream_key(1), "1-0", 2),
    ]
    leases("second").refresh()  # a second consumer joins: "first" must give one back

    kept = consume_bus.housekeep(consumer, first, list(deliveries))

    assert len(consumer.partitions) == 1
    assert kept == [d for d in deliveries if d.stream in consumer.streams]


# --- real consumer processes ------------------------------------------------------------------


class Consumers:
    """`consume_bus` processes of this test, on the test database and the test's prefix."""

    def __init__(self, prefix: str):
        self.env = dict(
            os.environ,
            DATABASE_URL=database_url_for(django_settings.DATABASES["default"]["NAME"]),
            SIGNALBOX_REDIS_PREFIX=prefix,
            SIGNALBOX_BUS_PARTITIONS="4",
            SIGNALBOX_BUS_LEASE_MS="2000",
            DJANGO_SETTINGS_MODULE="orchestrator.settings",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("SIGNALBOX_TEST_DB_NAME", None)
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(Path(LOGS) / f"{self.env['SIGNALBOX_REDIS_PREFIX']}-{name}.log", "w")  # noqa: SIM115
        self.processes[name] = subprocess.Popen(
            [sys.executable, "manage.py", "consume_bus", "--name", name,
             "--no-external-streams", "--no-connectors"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self.processes[name]

    def alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None and process.returncode != -signal.SIGKILL:
                raise AssertionError(f"consumer {name} exited with {process.returncode}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def consumers(bus_settings, transactional_db):
    running = Consumers(bus_settings.REDIS_PREFIX)
    bus_settings.SIGNALBOX = {**bus_settings.SIGNALBOX, "BUS_PARTITIONS": 4}
    yield running
    running.stop()


def owners(prefix: str) -> dict[int, str]:
    redis = client()
    found = {}
    for partition in range(4):
        owner = redis.get(
            f"{prefix}:bus-lease:{django_settings.SIGNALBOX['BUS_GROUP']}:{partition}"
        )
        if owner:
            found[partition] = owner
    return found


def send_keyed(event_type: str, keys: list[str], rounds: int) -> list[Event]:
    """`rounds` events per key, interleaved, each numbered in its key's order."""
    events = []
    for n in range(rounds):
        for key in keys:
            event, _ = ingest_event(
                envelope=from_structured(
                    cloudevent(event_type, subject=key, data={"key": key, "n": n})
                )
            )
            events.append(event)
    return events


def runs_by_event(events: list[Event]) -> dict[int, list[Run]]:
    found: dict[int, list[Run]] = {e.pk: [] for e in events}
    for run in Run.objects.filter(event__in=events).order_by("pk"):
        found[run.event_id].append(run)
    return found


def all_matched(events: list[Event], consumers: Consumers) -> bool:
    """Every event matched, with its run started. (Not necessarily finished: a light step
    past the consumer's inline budget goes to the Celery queue, which no worker reads
    under this test's prefix.)"""
    consumers.alive()
    unmatched = Event.objects.filter(pk__in=[e.pk for e in events], matched_at__isnull=True)
    return not unmatched.exists() and all(runs_by_event(events).values())


def test_two_consumer_processes_share_the_bus_keep_each_keys_order_and_survive_a_kill(
    consumers,
):
    event_type = "com.example.consumers"
    put_workflow(slug="two-consumers", raw=definition(log_step("only"), event=event_type))
    publish_workflow(slug="two-consumers")
    consumers.start("first")
    consumers.start("second")
    prefix = consumers.env["SIGNALBOX_REDIS_PREFIX"]
    wait_until(
        lambda: consumers.alive() or set(owners(prefix).values()) == {"first", "second"},
        timeout=60,
        message="both consumers to hold partitions",
    )
    keys = [f"customer-{n}" for n in range(12)]
    assert len({bus.partition_for(Event(subject=k, extensions={})) for k in keys}) == 4

    events = send_keyed(event_type, keys, rounds=5)
    wait_until(lambda: all_matched(events, consumers), timeout=120, message="every event matched")

    # Each event matched once, by one of the two; both did some of the work.
    runs = runs_by_event(events)
    assert all(len(r) == 1 for r in runs.values())
    pids = {consumers.processes[n].pid for n in ("first", "second")}
    workers = set(StepRun.objects.filter(run__event__in=events).values_list("worker", flat=True))
    # (the steps run inline name their consumer; those past its budget are still queued)
    assert {int(w.rsplit(":", 1)[1]) for w in workers if w} == pids
    # Within a key, runs were started in the order of its events.
    for key in keys:
        mine = [e for e in events if e.subject == key]
        assert [runs[e.pk][0].pk for e in mine] == sorted(runs[e.pk][0].pk for e in mine)

    # kill -9 one: once its leases lapse the other reads every partition, and nothing of
    # what was sent meanwhile is lost or run twice.
    os.killpg(consumers.processes["first"].pid, signal.SIGKILL)
    consumers.processes["first"].wait()
    after = send_keyed(event_type, keys, rounds=2)
    wait_until(lambda: all_matched(after, consumers), timeout=120, message="matched after kill")
    assert set(owners(prefix).values()) == {"second"}
    assert all(len(r) == 1 for r in runs_by_event(after).values())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ["bus"]),  # the embedded SQLite: one writer at a time
        ({"DATABASE_URL": "postgresql://x"}, ["bus", "bus-2"]),
        (
            {"DATABASE_URL": "postgresql://x", "SIGNALBOX_BUS_CONSUMERS": "3"},
            ["bus", "bus-2", "bus-3"],
        ),
        ({"SIGNALBOX_BUS_CONSUMERS": "0"}, ["bus"]),
    ],
)
def test_the_launcher_starts_as_many_bus_consumers_as_configured(env, expected):
    assert servers.bus_names(env) == expected
