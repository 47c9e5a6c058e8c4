"""The fault suite at its bounded size: every scenario of tests/chaos once, on one stack of
its own (its own PostgreSQL and Redis, which it restarts, kills and wipes). `make chaos`
runs the same scenarios at full size."""

from __future__ import annotations

import random

import pytest

from tests.chaos.harness import ChaosStack
from tests.chaos.scenarios import BOUNDED, SCENARIOS
from tests.chaos.soak import soak

# Each scenario waits for its whole backlog to settle: longer than the suite's 180 s default.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def chaos_stack():
    stack = ChaosStack().start()
    yield stack
    stack.stop()


# First, on the fresh stack: the soak measures steady state, and a fault scenario's dead
# connections (reset, black-holed) cost the first request that meets one a 503.
def test_a_short_soak_has_no_errors_and_every_page_stays_connected(chaos_stack):
    # 5 events/s: enough to push frames to every page; a backlog to settle costs minutes
    # on a loaded machine and shows nothing more.
    report = soak(chaos_stack, seconds=20, rate=5, sockets=20, every=5)
    outcome = report["outcome"]
    assert outcome.ok and outcome.accepted > 0, outcome.summary()
    assert report["errors"] == 0, (report["page_errors"], outcome.statuses)
    assert report["pages_connected"] == 20 and report["frames"] > 0
    assert all(s["pages"] == 20 for s in report["samples"])
    assert set(report["memory_end_mb"]) >= {"web", "worker", "bus", "scheduler"}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_nothing_accepted_is_lost_and_no_effect_repeats_under(name, chaos_stack):
    result = SCENARIOS[name](chaos_stack, BOUNDED, random.Random(name))
    outcome = result.outcome
    assert outcome is not None and sum(result.faults.values()) >= 1
    assert outcome.accepted > 0 and outcome.stored == outcome.accepted, outcome.summary()
    assert outcome.ok, outcome.summary()
    # Every run of these workflows succeeds: a fault may delay a step, never fail it.
    assert outcome.succeeded == outcome.runs == outcome.accepted, outcome.summary()
    assert outcome.effects == outcome.runs, outcome.summary()
    assert not result.notes, result.notes
    assert not any(isinstance(s, int) and s >= 500 and s != 503 for s in outcome.statuses)
