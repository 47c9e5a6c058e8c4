"""The fault scenarios. Each runs against a started ChaosStack, injects its faults under
steady load, and returns what it did and what the final check found (harness.settle).

Every loop is bounded in count and in time; every wait is on a condition with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psutil

from tests.chaos.harness import (
    DELAYED_TYPE,
    EVENT_TYPE,
    POISON_TYPES,
    ChaosStack,
    Load,
    Outcome,
    settle,
)
from tests.waiting import wait_until


@dataclass(frozen=True)
class Size:
    rate: float  # events per second of steady load
    faults: int  # faults of each kind a scenario injects
    between: int  # events accepted between two faults
    # 503s ingest must answer while PostgreSQL is down (each takes the pool's 3 s wait)
    refusals: int = 3


BOUNDED = Size(rate=15, faults=1, between=6, refusals=1)
FULL = Size(rate=10, faults=10, between=30)


@dataclass
class Result:
    name: str
    faults: Counter = field(default_factory=Counter)
    outcome: Outcome | None = None
    notes: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # what a scenario measured on the way


def _accepted_meanwhile(load: Load, count: int, timeout: float = 60) -> None:
    start = len(load.accepted)
    wait_until(
        lambda: len(load.accepted) - start >= count,
        timeout=timeout,
        interval=0.05,
        message=f"{count} more events accepted",
    )


def worker_kills(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """kill -9 step-running processes under load, in turn: every pool process right after
    a side effect reached the sink (the effect happened, its result is not recorded yet),
    one pool process at a random moment (Celery starts another), and the whole worker
    with the messages it had prefetched (restarted)."""
    result = Result("worker killed (kill -9) under load")
    load = Load(stack, size.rate).start()
    try:
        for n in range(max(size.faults, 3)):  # each kind of kill at least once
            _accepted_meanwhile(load, size.between)
            wait_until(lambda: stack.pool_processes(), timeout=60, message="a pool process")
            if n % 3 == 0:
                before = sum(stack.sink.snapshot()[0].values())
                wait_until(
                    lambda before=before: sum(stack.sink.snapshot()[0].values()) > before,
                    timeout=60,
                    interval=0.005,
                    message="a side effect to reach the sink",
                )
                for victim in stack.pool_processes():
                    with contextlib.suppress(psutil.NoSuchProcess):  # gone meanwhile
                        victim.send_signal(signal.SIGKILL)
                result.faults["pool processes killed after an effect"] += 1
            elif n % 3 == 1:
                # Looked up again as it is killed: Celery may be replacing the pool just now.
                wait_until(
                    lambda: _kill_one(stack.pool_processes(), rng),
                    timeout=60,
                    message="a pool process to kill",
                )
                result.faults["pool process killed at random"] += 1
            else:
                stack.restart("worker")
                result.faults["worker killed and restarted"] += 1
        _accepted_meanwhile(load, size.between)
    finally:
        load.stop()
    result.outcome = settle(stack, load.accepted, statuses=load.statuses)
    return result


def _kill_one(processes: list[psutil.Process], rng: random.Random) -> bool:
    """kill -9 one of `processes`, picked at random; False if there was none to kill."""
    try:
        rng.choice(processes).send_signal(signal.SIGKILL)
    except (IndexError, psutil.NoSuchProcess):
        return False
    return True


def bus_kills(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """kill -9 the bus consumer with entries pending, events arriving while it is gone;
    the new consumer reclaims what the dead one had read but not acknowledged."""
    result = Result("bus consumer killed (kill -9) with entries pending")
    load = Load(stack, size.rate).start()
    try:
        for _ in range(size.faults):
            _accepted_meanwhile(load, size.between)
            stack.kill("bus", signal.SIGKILL)
            result.faults["bus consumer killed"] += 1
            _accepted_meanwhile(load, max(3, size.between // 3))  # queued while it is gone
            stack.start_process("bus")
        _accepted_meanwhile(load, size.between)
    finally:
        load.stop()
    result.outcome = settle(stack, load.accepted, statuses=load.statuses)
    return result


def redis_restarts(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """Redis stopped cleanly, killed, and killed with its files wiped, under load: events
    are still accepted (PostgreSQL holds them), the outbox relay and the lost-task sweep
    put back what Redis lost, and work resumes."""
    result = Result("Redis restarted (clean, kill -9, wiped) under load")
    load = Load(stack, size.rate).start()
    modes = ["clean", "kill", "wipe"]
    try:
        for n in range(max(size.faults, len(modes))):
            mode = modes[n % len(modes)]
            _accepted_meanwhile(load, size.between)
            stack.redis.stop(mode)
            result.faults[f"Redis {mode}"] += 1
            _accepted_meanwhile(load, 3)  # accepted while Redis is away
            stack.redis.start()
        _accepted_meanwhile(load, size.between, timeout=120)
    finally:
        load.stop()
    result.outcome = settle(stack, load.accepted, statuses=load.statuses)
    return result


def postgres_restarts(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """PostgreSQL stopped (fast, then immediate: a crash) under load. While it is down,
    ingest answers 503 with Retry-After and never a 2xx for an event it did not store;
    every process recovers by itself once it is back."""
    result = Result("PostgreSQL restarted (fast, immediate) under load")
    load = Load(stack, size.rate).start()
    modes = ["fast", "immediate"]
    try:
        for n in range(max(size.faults, len(modes))):
            mode = modes[n % len(modes)]
            _accepted_meanwhile(load, size.between)
            mark = Counter(load.statuses)
            stack.postgres.stop(mode)
            result.faults[f"PostgreSQL {mode}"] += 1
            wait_until(
                lambda mark=mark: load.sent_since(mark, 503) >= size.refusals,
                timeout=60,
                interval=0.05,
                message="ingest to answer 503 while PostgreSQL is down",
            )
            stack.postgres.start()
        _accepted_meanwhile(load, size.between, timeout=120)
    finally:
        load.stop()
    result.outcome = settle(stack, load.accepted, statuses=load.statuses)
    if load.refusals_without_retry_after:
        result.notes.append(f"{load.refusals_without_retry_after} 503s without Retry-After")
    return result


def frozen_worker(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """A worker frozen (SIGSTOP) mid-step past its lease: another worker takes the step
    over; thawed (SIGCONT), the frozen one's late result is refused and its effect is not
    repeated (the receiver sees the same idempotency key twice and keeps one)."""
    result = Result("worker frozen past its lease (SIGSTOP, then SIGCONT)")
    accepted: list[str] = []
    for n in range(size.faults):
        marker = f"freeze-{n}-{rng.randrange(10**9)}"
        gate = stack.sink.hold(marker)
        load = Load(stack, 1)
        with httpx.Client(base_url=stack.base_url, timeout=15) as http:
            load.send(http, _headers(stack), n, data={"marker": marker}, retries=10)
        accepted += load.accepted
        wait_until(
            lambda marker=marker: _deliveries_with(stack, marker) >= 1,
            timeout=60,
            message="the step to reach the sink",
        )
        stack.kill("worker", signal.SIGSTOP)
        result.faults["worker frozen"] += 1
        stack.start_process("worker2")  # the worker that takes over
        wait_until(
            lambda marker=marker: _deliveries_with(stack, marker) >= 2,
            timeout=90,
            message="another worker to take over",
        )
        gate.set()
        [(run_id,)] = stack.query(
            "SELECT r.id FROM workflows_run r JOIN workflows_event e"
            " ON e.id = r.event_id WHERE e.ce_id = %s",
            (load.accepted[0],),
        )
        wait_until(
            lambda run_id=run_id: (
                stack.query("SELECT status FROM workflows_run WHERE id = %s", (run_id,))[0][0]
                == "succeeded"
            ),
            timeout=60,
            message="the run to succeed on the other worker",
        )
        stack.kill("worker", signal.SIGCONT)
        # The thawed worker finishes its call and tries to record it: refused (fenced).
        wait_until(
            lambda run_id=run_id: _fenced(stack, run_id),
            timeout=60,
            message="the thawed worker's late result to be refused",
        )
        stack.kill("worker2", signal.SIGKILL)
        del stack.processes["worker2"]
        result.faults["late result refused"] += 1
    result.outcome = settle(stack, accepted)
    return result


def delays_across_restart(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """Delays fall due while every process is stopped; after the restart each fires once."""
    result = Result("delays due during a full restart")
    load = Load(stack, 1, event_type=DELAYED_TYPE)
    with httpx.Client(base_url=stack.base_url, timeout=15) as http:
        for n in range(size.between):
            load.send(http, _headers(stack), n, retries=10)
    count = len(load.accepted)
    wait_until(
        lambda: (
            stack.query(
                "SELECT count(*) FROM workflows_steprun"
                " WHERE step_id = 'wait' AND status = 'waiting'"
            )[0][0]
            >= count
        ),
        timeout=60,
        message="every delay to be waiting",
    )
    names = list(stack.processes)
    for name in names:
        stack.kill(name, signal.SIGTERM)
    result.faults["every process stopped"] += 1
    wait_until(
        lambda: (
            stack.query(
                "SELECT count(*) FROM workflows_steprun"
                " WHERE step_id = 'wait' AND status = 'waiting' AND wake_at > now()"
            )[0][0]
            == 0
        ),
        timeout=60,
        message="every delay to fall due while stopped",
    )
    for name in names:
        stack.start_process(name)
    stack.wait_ready()
    result.outcome = settle(stack, load.accepted)
    return result


def poison(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """Poison beside steady load: a step result that cannot be stored, a step that kills its
    worker process every time, event data a trigger filter cannot convert, an event larger
    than any limit. Each fails fast with a clear error, or lands in the dead-letter queue
    after its attempts, while everything else flows."""
    result = Result("poison under load")
    load = Load(stack, size.rate).start()
    sent: dict[str, str] = {}
    try:
        _accepted_meanwhile(load, size.between)
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            for kind, event_type in POISON_TYPES.items():
                sender = Load(stack, 1, event_type=event_type, source="/chaos/poison")
                data = {"big": 10**40} if kind == "filter" else None
                sender.send(http, _headers(stack), 0, data=data, retries=10)
                if not sender.accepted:
                    result.notes.append(f"poison {kind} refused: {dict(sender.statuses)}")
                    continue
                sent[kind] = sender.accepted[0]
                result.faults[f"poison: {kind}"] += 1
            oversize = {"specversion": "1.0", "id": f"oversize-{rng.randrange(10**9)}",
                        "source": "/chaos/poison", "type": EVENT_TYPE,
                        "data": {"pad": "x" * (1024 * 1024)}}  # fmt: skip
            answer = http.post(
                "/api/v1/events", content=json.dumps(oversize), headers=_headers(stack)
            )
            result.faults["oversize event"] += 1
            if answer.status_code != 413 or "problem+json" not in answer.headers["content-type"]:
                result.notes.append(f"oversize event answered {answer.status_code}")
        _accepted_meanwhile(load, size.between)
    finally:
        load.stop()
    poisoned = set(sent.values())
    result.outcome = settle(
        stack,
        load.accepted,
        statuses=load.statuses,
        explained=lambda event_id, reason: event_id in poisoned and event_id != sent.get("filter"),
    )
    result.notes += _poison_findings(stack, sent)
    return result


# A black hole outlasts every client timeout the processes rely on: Redis commands 5 s
# (workflows/infra/redis_client.py), a PostgreSQL connect 5 s and the web pool's wait 3 s
# (orchestrator/settings.py).
BLACK_HOLE_SECONDS = 8.0
LATENCY_SECONDS = 5.0
STORE_TIMEOUT_SECONDS = 3.0  # SIGNALBOX_INGEST_STORE_TIMEOUT (orchestrator/settings.py)


def network_faults(stack: ChaosStack, size: Size, rng: random.Random) -> Result:
    """The network between the processes and their services misbehaves under steady load,
    through the fault proxies: 50-200 ms of added latency on PostgreSQL and Redis, every
    open connection to each reset, and each black-holed (silence, then what was held
    delivered) for longer than any client timeout. Nothing is restarted: every process must
    notice by its own timeouts and reconnect by itself."""
    result = Result("network faults (latency, resets, black holes) under load")
    proxies = {"PostgreSQL": stack.pg_proxy, "Redis": stack.redis_proxy}
    if None in proxies.values():
        raise RuntimeError("network-faults needs a stack with its proxies (proxied=True)")
    load = Load(stack, size.rate).start()
    try:
        for _ in range(size.faults):
            for proxy in proxies.values():
                proxy.latency = rng.uniform(0.05, 0.2)
            result.faults["latency 50-200 ms on both"] += 1
            # A few seconds of it, with traffic: a request makes several round trips, so
            # under 200 ms each the load's one sender gets a few events a second at most.
            _for_seconds(LATENCY_SECONDS)
            _accepted_meanwhile(load, 1, timeout=120)
            for proxy in proxies.values():
                proxy.latency = 0.0
            for name, proxy in proxies.items():
                result.faults[f"{name} connections reset"] += proxy.reset()
                _accepted_meanwhile(load, max(3, size.between // 2))
            for name, proxy in proxies.items():
                load.slowest, mark = {}, Counter(load.statuses)
                proxy.set_black_hole(True)
                result.faults[f"{name} black-holed {BLACK_HOLE_SECONDS:.0f} s"] += 1
                try:
                    _for_seconds(BLACK_HOLE_SECONDS)
                finally:
                    proxy.up()
                _accepted_meanwhile(load, max(3, size.between // 2), timeout=120)
                slowest = max(load.slowest.values(), default=0.0)
                figures = result.figures.setdefault(f"{name} black hole", Counter())
                figures["503 answers"] += load.sent_since(mark, 503)
                figures["slowest answer (s)"] = max(figures["slowest answer (s)"], slowest)
                # The promise (docs/reliability.md): with the database away, ingest answers
                # 503 + Retry-After within its store timeout, not after the silence ends.
                if name == "PostgreSQL" and slowest > STORE_TIMEOUT_SECONDS + 3:
                    result.notes.append(
                        f"an answer took {slowest:.1f} s with PostgreSQL black-holed"
                        f" ({dict(load.slowest)})"
                    )
        _accepted_meanwhile(load, size.between, timeout=120)
    finally:
        load.stop()
        for proxy in proxies.values():
            proxy.up()
    result.outcome = settle(stack, load.accepted, statuses=load.statuses)
    if load.refusals_without_retry_after:
        result.notes.append(f"{load.refusals_without_retry_after} 503s without Retry-After")
    return result


def _for_seconds(seconds: float) -> None:
    """A fault's duration (not a wait for something to happen)."""
    threading.Event().wait(seconds)


def _poison_findings(stack: ChaosStack, sent: dict[str, str]) -> list[str]:
    """What each poison event should have come to; a line per one that did not."""
    notes = []

    def runs_of(event_id: str) -> list[tuple]:
        return stack.query(
            "SELECT r.status, coalesce(s.error_code, ''), s.attempt FROM workflows_run r"
            " JOIN workflows_event e ON e.id = r.event_id"
            " LEFT JOIN workflows_steprun s ON s.run_id = r.id"
            " WHERE e.ce_id = %s ORDER BY s.attempt",
            (event_id,),
        )

    def final() -> bool:
        return all(
            runs_of(sent[k]) and all(row[0] in ("failed", "succeeded") for row in runs_of(sent[k]))
            for k in ("unstorable", "crash")
            if k in sent
        )

    wait_until(final, timeout=120, message="the poison runs to end")
    if "unstorable" in sent:
        rows = runs_of(sent["unstorable"])
        if rows[-1][0] != "failed" or rows[-1][1].startswith("timeout"):
            notes.append(f"unstorable result: {rows} (should fail at once, not by a lease)")
    if "crash" in sent:
        rows = runs_of(sent["crash"])
        if rows[-1][0] != "failed" or len(rows) != 2:
            notes.append(f"crashing step: {rows} (should fail after its 2 attempts)")
    if "filter" in sent:
        [(matched, runs)] = stack.query(
            "SELECT e.matched_at IS NOT NULL, (SELECT count(*) FROM workflows_run r"
            " WHERE r.event_id = e.id) FROM workflows_event e WHERE e.ce_id = %s",
            (sent["filter"],),
        )
        if not matched or runs:
            notes.append(f"filter over odd data: matched {matched}, runs {runs}")
    return notes


def _headers(stack: ChaosStack) -> dict:
    return {
        "Authorization": f"Bearer {stack.token}",
        "Content-Type": "application/cloudevents+json",
    }


def _deliveries_with(stack: ChaosStack, marker: str) -> int:
    seen, bodies = stack.sink.snapshot()
    return sum(n for key, n in seen.items() if marker.encode() in bodies.get(key, b""))


def _fenced(stack: ChaosStack, run_id: int) -> bool:
    """The thawed worker logged that its late result was refused (runs.write_result)."""
    return f"(run {run_id}) refused" in stack.log("worker")


SCENARIOS = {
    "worker-kills": worker_kills,
    "bus-kills": bus_kills,
    "redis-restarts": redis_restarts,
    "postgres-restarts": postgres_restarts,
    "frozen-worker": frozen_worker,
    "delays-across-restart": delays_across_restart,
    "poison": poison,
    "network-faults": network_faults,
}


def describe(result: Result) -> dict:
    outcome = result.outcome
    return {
        "scenario": result.name,
        "faults": dict(result.faults),
        "ok": bool(outcome and outcome.ok),
        "summary": outcome.summary() if outcome else "not run",
        "notes": result.notes,
        "figures": {k: dict(v) for k, v in result.figures.items()},
    }


def as_json(results: list[Result]) -> str:
    return json.dumps([describe(r) for r in results], indent=2)


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 1)
