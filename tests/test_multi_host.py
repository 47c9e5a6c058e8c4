"""Workers on two "hosts" (network namespaces of their own, tests/chaos/hosts.py) share one
PostgreSQL and one Redis: both do work, and cutting one off mid-load loses nothing and
repeats no effect — its running steps are taken over by the other host after their
heartbeat lapses, with the same idempotency keys."""

from __future__ import annotations

import time

import pytest

from tests.chaos.harness import ChaosStack, Load, settle
from tests.chaos.hosts import Hosts
from tests.waiting import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def two_hosts():
    hosts = Hosts(2).create()
    stack = ChaosStack(
        listen_host=hosts.services_address,
        worker_hosts={f"worker-{ns}": ns for ns in hosts.namespaces},
    )
    try:
        yield hosts, stack.start()
    finally:
        stack.stop()
        hosts.destroy()


def steps_by_host(stack: ChaosStack) -> dict[str, int]:
    return dict(
        stack.query(
            "SELECT split_part(worker, '@', 1), count(*) FROM workflows_steprun"
            " WHERE status = 'succeeded' AND worker <> '' GROUP BY 1"
        )
    )


def test_both_hosts_work_and_cutting_one_off_loses_nothing(two_hosts):
    hosts, stack = two_hosts
    first, second = hosts.namespaces
    load = Load(stack, rate=15).start()
    try:
        wait_until(
            lambda: all(steps_by_host(stack).get(ns, 0) >= 3 for ns in hosts.namespaces),
            timeout=180,
            interval=0.5,
            message="steps done on both hosts",
        )
        # Cut the first host while it is running a side effect: its result never comes back.
        held = stack.sink.hold('"n"')
        wait_until(
            lambda: any(stack.query(
                "SELECT 1 FROM workflows_steprun WHERE status = 'running'"
                " AND step_id = 'charge' AND worker LIKE %s", (f"{first}@%",),
            )),
            timeout=120,
            interval=0.05,
            message="a side effect running on the first host",
        )  # fmt: skip
        hosts.cut(first)
        cut_at = time.time()
        held.set()
        before = steps_by_host(stack).get(second, 0)
        start = len(load.accepted)
        wait_until(
            lambda: len(load.accepted) - start >= 30,
            timeout=120,
            interval=0.1,
            message="more events accepted after the cut",
        )
    finally:
        load.stop()
    # The cut host's transactions, some holding a run's row lock, end when the server's
    # keepalives find the host gone (SIGNALBOX_DB_KEEPALIVE_SECONDS; here the proxy in front
    # of PostgreSQL probes for it): left to the kernel's two hours, one held an attempt and
    # the scheduler's sweep behind it, and that run never finished.
    wait_until(
        lambda: (
            not stack.query(
                "SELECT 1 FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%'"
                " AND xact_start < to_timestamp(%s)",
                (cut_at,),
            )
        ),
        timeout=60,
        interval=0.5,
        message="the cut host's open transactions to end",
    )
    outcome = settle(stack, load.accepted, timeout=120)
    assert outcome.ok, outcome.summary()
    assert outcome.accepted > 0 and outcome.succeeded == outcome.runs == outcome.accepted, (
        outcome.summary()
    )
    assert outcome.effects == outcome.runs, outcome.summary()
    # The second host carried on alone: it finished the cut host's work and the new events.
    assert steps_by_host(stack).get(second, 0) > before
    taken_over = stack.query(
        "SELECT count(*) FROM workflows_steprun s WHERE s.attempt > 1 AND s.status = 'succeeded'"
        " AND s.worker LIKE %s AND EXISTS (SELECT 1 FROM workflows_steprun f WHERE"
        " f.run_id = s.run_id AND f.step_id = s.step_id AND f.worker LIKE %s)",
        (f"{second}@%", f"{first}@%"),
    )
    assert taken_over[0][0] >= 1, "no step of the cut host was taken over by the other"
