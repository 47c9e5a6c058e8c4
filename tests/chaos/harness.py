"""The stack under faults: Signalbox's real processes against a PostgreSQL and a Redis of
the suite's own, each behind a fault proxy, a loopback sink for side effects, a load
generator, and the check every scenario ends with."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg

from orchestrator import servers
from orchestrator.embedded_redis import free_port
from orchestrator.launcher import die_with_parent
from tests.chaos.proxy import FaultProxy
from tests.chaos.services import PrivatePostgres, PrivateRedis
from tests.chaos.sink import Sink
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per event is noise here
LOGS = ROOT / "var" / "chaos"
EVENT_TYPE = "com.example.chaos.order"
DELAYED_TYPE = "com.example.chaos.delayed"
POISON_TYPES = {
    "unstorable": "com.example.chaos.poison.unstorable",
    "crash": "com.example.chaos.poison.crash",
    "filter": "com.example.chaos.poison.filter",
}
FINAL = ("succeeded", "failed", "cancelled")
SETTLE_CAP_SECONDS = 3600
DB_KEEPALIVE_SECONDS = 3


def workflow(sink_url: str) -> dict:
    """A light step, a side effect with an idempotency key, a light step."""
    return {
        "name": "Chaos orders",
        "triggers": [{"event": EVENT_TYPE}],
        "steps": [
            {"id": "prepare", "kind": "transform",
             "config": {"output": {"n": "{{ event.data.n }}"}}},
            # Retried with the same idempotency key when its worker is lost: the receiver
            # keeps one effect per key (the way a payment API does).
            {"id": "charge", "kind": "http_request", "after": ["prepare"],
             "config": {"url": sink_url, "method": "POST", "send_event": True,
                        "timeout_seconds": 20},
             "retry": {"max_attempts": 5, "delay_seconds": 0.2, "jitter": False}},
            {"id": "done", "kind": "log", "after": ["charge"], "config": {"message": "charged"}},
        ],
    }  # fmt: skip


def delayed_workflow(sink_url: str, seconds: float) -> dict:
    """A delay, then a side effect: a wait that falls due while everything is stopped."""
    return {
        "name": "Chaos delayed",
        "triggers": [{"event": DELAYED_TYPE}],
        "steps": [
            {"id": "wait", "kind": "delay", "config": {"seconds": seconds}},
            {"id": "charge", "kind": "http_request", "after": ["wait"],
             "config": {"url": sink_url, "method": "POST", "send_event": True},
             "retry": {"max_attempts": 5, "delay_seconds": 0.2, "jitter": False}},
        ],
    }  # fmt: skip


def poison_workflows() -> dict[str, dict]:
    """A step whose result cannot be stored, a step that kills its worker every time (two
    attempts), and a trigger filter over data the expression layer cannot convert."""
    python = lambda fn: {"id": "poison", "kind": "python", "config": {"function": fn}}  # noqa: E731
    crash = {**python("chaos.crash_worker"), "retry": {"max_attempts": 2, "delay_seconds": 0.2}}
    return {
        "chaos-unstorable": {
            "name": "Poison: unstorable result",
            "triggers": [{"event": POISON_TYPES["unstorable"]}],
            "steps": [python("chaos.not_a_number")],
        },
        "chaos-crash": {
            "name": "Poison: crashes its worker",
            "triggers": [{"event": POISON_TYPES["crash"]}],
            "steps": [crash],
        },
        "chaos-filter": {
            "name": "Poison: filter over odd data",
            "triggers": [{"event": POISON_TYPES["filter"], "filter": "event.data.big > 1"}],
            "steps": [{"id": "never", "kind": "log", "config": {"message": "matched"}}],
        },
    }


def _own_group_and_die_with_parent() -> None:
    os.setsid()  # kill() signals the whole group (a worker and its pool)
    die_with_parent()


class ChaosStack:
    """Start with `start()`, stop with `stop()`; processes by name: web, worker, bus,
    scheduler.

    `worker_hosts` ({process name: network namespace}) runs workers in network namespaces
    of their own instead of the one `worker` (tests/chaos/hosts.py); then the services and
    the sink listen on `listen_host`, an address those namespaces can reach.

    `proxied=False` connects the processes to PostgreSQL and Redis directly: the fault
    proxies run in this (Python, one GIL) process, so every byte through them competes with
    whatever else the test does here — right for faults, wrong for a measurement (the soak).
    `sink_delay` is how long the sink holds each answer (tests/chaos/sink.py)."""

    def __init__(
        self,
        *,
        tag: str | None = None,
        delay_seconds: float = 4.0,
        listen_host: str = "127.0.0.1",
        worker_hosts: dict[str, str] | None = None,
        proxied: bool = True,
        sink_delay: float | None = None,
        concurrency: int = 2,
    ):
        self.tag = tag or uuid.uuid4().hex[:8]
        self.workdir = Path(tempfile.mkdtemp(prefix=f"signalbox-chaos-{self.tag}-"))
        self.postgres = PrivatePostgres(self.workdir)
        self.redis = PrivateRedis(self.workdir)
        self.listen_host = listen_host
        self.worker_hosts = dict(worker_hosts or {})
        self.sink = Sink(listen_host) if sink_delay is None else Sink(listen_host, sink_delay)
        self.proxied = proxied
        self.concurrency = concurrency
        self.delay_seconds = delay_seconds
        self.processes: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.pg_proxy: FaultProxy | None = None
        self.redis_proxy: FaultProxy | None = None
        self.token = ""
        self.faults: Counter[str] = Counter()
        # Dead letters up to this id were judged by an earlier scenario's check.
        self.judged_letters = 0

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> ChaosStack:
        self.postgres.init()
        self.redis.start()
        host = self.listen_host
        pg_port, redis_port = self.postgres.port, self.redis.port
        if self.proxied:
            # Probing clients as PostgreSQL itself does here (SIGNALBOX_DB_KEEPALIVE_SECONDS
            # below): through the proxy, the server's own probes reach only the proxy.
            self.pg_proxy = FaultProxy(
                self.postgres.port, name="postgres", host=host, keepalive=DB_KEEPALIVE_SECONDS
            )
            self.redis_proxy = FaultProxy(self.redis.port, name="redis", host=host)
            pg_port, redis_port = self.pg_proxy.start(), self.redis_proxy.start()
        self.sink.start()
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE signalbox")
        self.database_url = f"postgresql://postgres@127.0.0.1:{self.postgres.port}/signalbox"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SIGNALBOX_TEST")},
            "DATABASE_URL": f"postgresql://postgres@{host}:{pg_port}/signalbox",
            "REDIS_URL": f"redis://{host}:{redis_port}/0",
            "SIGNALBOX_REDIS_PREFIX": f"chaos-{self.tag}",
            "SIGNALBOX_VAR_DIR": str(self.workdir / "var"),
            "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
            "DJANGO_DEBUG": "0",
            "PYTHONUNBUFFERED": "1",
            "SIGNALBOX_LOG_LEVEL": "WARNING",
            "SIGNALBOX_OUTBOUND_ALLOW": f"{host}/32",
            # Faults are found in seconds, not the production minute: a silent attempt is
            # lost after 6 s, a pending bus entry is reclaimed after 3 s, an event
            # unmatched after 5 s (its entry lost with Redis) is published again.
            "SIGNALBOX_STEP_HEARTBEAT_SECONDS": "1",
            "SIGNALBOX_STEP_HEARTBEAT_TIMEOUT_SECONDS": "6",
            "SIGNALBOX_BUS_CLAIM_IDLE_MS": "3000",
            # A killed bus consumer's partitions pass to its successor after 3 s.
            "SIGNALBOX_BUS_LEASE_MS": "3000",
            "SIGNALBOX_OUTBOX_GRACE_SECONDS": "2",
            "SIGNALBOX_REDELIVER_UNMATCHED_SECONDS": "5",
            # A step message lost with Redis or with a killed worker is sent again after 8 s.
            "SIGNALBOX_REENQUEUE_AFTER_SECONDS": "8",
            # A host cut off mid-transaction: PostgreSQL drops its sessions (and their row
            # locks) after ~6 s of unanswered keepalives.
            "SIGNALBOX_DB_KEEPALIVE_SECONDS": str(DB_KEEPALIVE_SECONDS),
            "SIGNALBOX_PYTHON_MODULES": "tests.chaos.python_steps",
        }
        direct = {**self.env, "DATABASE_URL": self.database_url}
        imports = []
        for slug, definition in (
            ("chaos-orders", workflow(self.sink.url)),
            ("chaos-delayed", delayed_workflow(self.sink.url, self.delay_seconds)),
            *poison_workflows().items(),
        ):
            path = self.workdir / f"{slug}.json"
            path.write_text(json.dumps(definition))
            imports.append((str(path), slug))
        # One Django start for the whole setup, not one per command: each costs seconds on
        # a loaded machine.
        setup = (
            "import io\nfrom django.core.management import call_command\n"
            "call_command('migrate', verbosity=0)\n"
            f"for path, slug in {imports!r}:\n"
            "    call_command('workflows', 'import', path, '--slug', slug, '--publish',"
            " stdout=io.StringIO())\n"
            "out = io.StringIO()\n"
            "call_command('create_api_token', 'chaos', '--role', 'editor', stdout=out)\n"
            "print('TOKEN=' + out.getvalue().strip())\n"
        )
        output = self.manage(["shell", "--no-imports", "-c", setup], env=direct)
        self.token = output.split("TOKEN=")[-1].strip()
        self._start_web()
        for name in (*(self.worker_hosts or ["worker"]), "bus", "scheduler"):
            self.start_process(name)
        self.wait_ready()
        return self

    def _start_web(self, tries: int = 3) -> None:
        """The web process, on a port free when looked at: another test run may take it
        before uvicorn binds it (then uvicorn exits), so try again on a new one."""
        for _ in range(tries):
            self.port = free_port()
            self.start_process("web")
            process = self.processes["web"]

            def settled(process=process) -> bool:
                if process.poll() is not None:
                    return True
                try:
                    httpx.get(f"{self.base_url}/healthz", timeout=2)
                    return True
                except httpx.HTTPError:
                    return False

            wait_until(settled, timeout=120, interval=0.1, message="the web process to listen")
            if process.poll() is None:
                return
        raise RuntimeError(f"web did not start; see {LOGS / f'{self.tag}-web.log'}")

    def manage(self, args: list[str], *, env: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def command(self, name: str) -> list[str]:
        python = sys.executable
        if name == "web":
            return servers.web_command(python, host="127.0.0.1", port=self.port, env=self.env)
        if name.startswith("worker"):
            namespace = self.worker_hosts.get(name)
            # A worker in a namespace names itself after it: StepRun.worker tells the hosts
            # apart.
            label = namespace or f"chaos-{self.tag}-{uuid.uuid4().hex[:4]}"
            worker = [str(Path(python).parent / "celery"), "-A", "orchestrator", "worker",
                      "--loglevel", "WARNING", "--concurrency", str(self.concurrency), "--hostname",
                      f"{label}@%h", "--without-gossip", "--without-mingle"]  # fmt: skip
            return ["ip", "netns", "exec", namespace, *worker] if namespace else worker
        if name == "bus":
            return [python, "manage.py", "consume_bus", "--no-external-streams"]
        return [python, "manage.py", "scheduler", "--interval", "0.2"]

    def start_process(self, name: str) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"{self.tag}-{name}.log", "a")  # noqa: SIM115 - the child keeps it
        env = servers.web_env(self.env) if name == "web" else self.env
        self.processes[name] = subprocess.Popen(
            self.command(name), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_own_group_and_die_with_parent,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {LOGS / f'{self.tag}-{name}.log'}")
            try:
                return httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=timeout, interval=0.25, message="the chaos stack to be ready")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process and its children (a whole process group)."""
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(30)

    def restart(self, name: str) -> None:
        self.kill(name, signal.SIGKILL)
        self.start_process(name)

    def pool_processes(self) -> list[psutil.Process]:
        """The Celery worker's pool processes (the ones that run steps)."""
        try:
            return psutil.Process(self.processes["worker"].pid).children()
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        for proxy in (self.pg_proxy, self.redis_proxy):
            if proxy is not None:
                proxy.stop()
        self.sink.stop()
        self.redis.destroy()
        self.postgres.destroy()

    # --- what the database holds -------------------------------------------------------------

    def log(self, name: str) -> str:
        path = LOGS / f"{self.tag}-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def query(self, sql: str, params=()) -> list[tuple]:
        with psycopg.connect(self.database_url, connect_timeout=10) as conn:
            return conn.execute(sql, params).fetchall()


@dataclass
class Load:
    """Posts events at a steady rate on threads of its own; remembers what was accepted.

    With `senders` > 1 the rate is shared by that many threads, each with its own
    connection: one thread waits for each answer before the next post, so a slow answer
    (a loaded machine) would lower the rate offered (the soak uses several)."""

    stack: ChaosStack
    rate: float
    event_type: str = EVENT_TYPE
    source: str = "/chaos"
    senders: int = 1
    accepted: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    refusals_without_retry_after: int = 0
    slowest: dict = field(default_factory=dict)  # status -> the longest answer (s)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for first in range(self.senders):
            thread = threading.Thread(
                target=self._run, args=(first,), name=f"chaos-load-{first}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def _run(self, first: int = 0) -> None:
        headers = {
            "Authorization": f"Bearer {self.stack.token}",
            "Content-Type": "application/cloudevents+json",
        }
        interval, n = self.senders / self.rate, first
        next_at = time.monotonic() + first / self.rate
        with httpx.Client(base_url=self.stack.base_url, timeout=15) as http:
            while not self._stop.is_set():
                self.send(http, headers, n)
                n += self.senders
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def send(
        self, http: httpx.Client, headers: dict, n: int, data: dict | None = None, retries: int = 0
    ) -> None:
        event_id = f"{self.source.strip('/')}-{uuid.uuid4().hex}"
        event = {
            "specversion": "1.0",
            "id": event_id,
            "source": self.source,
            "type": self.event_type,
            "data": {"event": event_id, "n": n, **(data or {})},
        }
        for _attempt in range(retries + 1):  # a producer sends a refused event again
            asked = time.monotonic()
            try:
                answer = http.post("/api/v1/events", content=json.dumps(event), headers=headers)
            except httpx.HTTPError as exc:
                with self._lock:
                    self.statuses[type(exc).__name__] += 1
                continue
            took = time.monotonic() - asked
            with self._lock:
                self.statuses[answer.status_code] += 1
                slowest = max(took, self.slowest.get(answer.status_code, 0))
                self.slowest[answer.status_code] = slowest
            if answer.status_code // 100 == 2:
                self.accepted.append(event_id)
                return
            if answer.status_code == 503 and "retry-after" not in answer.headers:
                self.refusals_without_retry_after += 1
            if answer.status_code != 503:
                return
            self._stop.wait(float(answer.headers.get("retry-after", "1")))

    def sent_since(self, mark: Counter, status) -> int:
        return self.statuses[status] - mark[status]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@dataclass
class Outcome:
    """What a scenario's final check found."""

    accepted: int
    stored: int
    runs: int
    runs_final: int
    succeeded: int
    effects: int  # distinct idempotency keys the sink saw
    deliveries: int  # requests the sink received, repeats included
    lost: list[str]
    unfinished: list[int]
    journal_gaps: list[int]
    missing_effects: list[int]
    duplicated_effects: list[str]  # events whose effect arrived under two keys (two runs)
    duplicate_runs: list[str]
    unexplained_dead_letters: list[str]
    statuses: dict
    # What the unfinished runs' attempts were doing: why they did not finish.
    unfinished_attempts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.unfinished
            or self.journal_gaps
            or self.missing_effects
            or self.duplicated_effects
            or self.duplicate_runs
            or self.unexplained_dead_letters
        )

    def summary(self) -> str:
        return (
            f"accepted {self.accepted}, stored {self.stored}, runs {self.runs} "
            f"({self.runs_final} final, {self.succeeded} succeeded), effects {self.effects} "
            f"(deliveries {self.deliveries}), lost {len(self.lost)}, unfinished "
            f"{len(self.unfinished)}, journal gaps {len(self.journal_gaps)}, missing effects "
            f"{len(self.missing_effects)}, duplicated effects {len(self.duplicated_effects)}, "
            f"duplicate runs {len(self.duplicate_runs)}, unexplained dead letters "
            f"{len(self.unexplained_dead_letters)}; answers {dict(self.statuses)}"
            + "".join(f"\n       {letter}" for letter in self.unexplained_dead_letters[:5])
            + "".join(f"\n       unfinished {line}" for line in self.unfinished_attempts[:10])
        )


def settle(
    stack: ChaosStack,
    accepted: list[str],
    *,
    timeout: float = 120,
    explained=lambda event_id, reason: False,
    statuses: dict | None = None,
) -> Outcome:
    """Wait until every accepted event has been matched and every run is final — or until
    nothing has moved for `timeout` seconds: a slow machine works through a backlog slowly,
    a stuck one not at all — then check what the scenario promised."""
    ids = list(accepted)

    def counts() -> tuple[int, int, int]:
        [(stored, matched)] = stack.query(
            "SELECT count(*), count(matched_at) FROM workflows_event WHERE ce_id = ANY(%s)",
            (ids,),
        )
        [(open_runs,)] = stack.query(
            "SELECT count(*) FROM workflows_run WHERE status <> ALL(%s)", (list(FINAL),)
        )
        return stored, matched, open_runs

    last = None
    moved_at = time.monotonic()

    def settled_or_stuck() -> bool:
        nonlocal last, moved_at
        now = counts()
        if now != last:
            last, moved_at = now, time.monotonic()
        stored, matched, open_runs = now
        done = stored == matched == len(ids) and open_runs == 0
        return done or time.monotonic() - moved_at > timeout

    with contextlib.suppress(AssertionError):  # the checks below say what is missing
        wait_until(
            settled_or_stuck,
            timeout=SETTLE_CAP_SECONDS,
            interval=0.5,
            message="every accepted event to settle",
        )
    stored_ids = {
        ce
        for (ce,) in stack.query("SELECT ce_id FROM workflows_event WHERE ce_id = ANY(%s)", (ids,))
    }
    runs = stack.query(
        "SELECT r.id, r.status FROM workflows_run r JOIN workflows_event e ON e.id = r.event_id"
        " WHERE e.ce_id = ANY(%s)",
        (ids,),
    )
    unmatched = {
        ce
        for (ce,) in stack.query(
            "SELECT e.ce_id FROM workflows_event e WHERE e.ce_id = ANY(%s) AND NOT EXISTS"
            " (SELECT 1 FROM workflows_run r WHERE r.event_id = e.id)",
            (ids,),
        )
    }
    gaps = [
        run_id
        for (run_id,) in stack.query(
            "SELECT run_id FROM workflows_runjournal GROUP BY run_id"
            " HAVING min(seq) <> 1 OR max(seq) <> count(*)"
        )
    ]
    keys = stack.query(
        "SELECT s.run_id, s.idempotency_key FROM workflows_steprun s"
        " WHERE s.step_id = 'charge' AND s.status = 'succeeded'"
    )
    seen, bodies = stack.sink.snapshot()
    missing = sorted({run_id for run_id, key in keys if not seen.get(key)})
    wanted = set(ids)
    keys_by_event: dict[str, set[str]] = {}
    for key, body in bodies.items():
        event = json.loads(body or b"{}").get("event", "")
        if event in wanted:
            keys_by_event.setdefault(event, set()).add(key)
    mine = {key for keys in keys_by_event.values() for key in keys}
    duplicate_runs = [
        ce
        for (ce,) in stack.query(
            "SELECT e.ce_id FROM workflows_run r JOIN workflows_event e ON e.id = r.event_id"
            " WHERE e.ce_id = ANY(%s) AND r.replay_of_id IS NULL GROUP BY e.ce_id"
            " HAVING count(*) > 1",
            (ids,),
        )
    ]
    letters = stack.query(
        "SELECT d.id, d.kind, d.reason, e.ce_id FROM workflows_deadletter d"
        " LEFT JOIN workflows_event e ON e.id = d.event_id WHERE d.id > %s ORDER BY d.id",
        (stack.judged_letters,),
    )
    if letters:
        stack.judged_letters = letters[-1][0]
    unexplained = [
        f"{kind} #{pk}: {reason}"
        for pk, kind, reason, ce_id in letters
        if not explained(ce_id, reason)
    ]
    unfinished = sorted(run_id for run_id, status in runs if status not in FINAL)
    attempts = stack.query(
        "SELECT run_id, step_id, attempt, status, worker, enqueued_at, started_at, heartbeat_at"
        " FROM workflows_steprun WHERE run_id = ANY(%s) ORDER BY run_id, id",
        (unfinished[:10],),
    )
    return Outcome(
        accepted=len(ids),
        stored=len(stored_ids),
        runs=len(runs),
        runs_final=sum(status in FINAL for _, status in runs),
        succeeded=sum(status == "succeeded" for _, status in runs),
        effects=len(mine),
        deliveries=sum(seen[key] for key in mine),
        lost=sorted((set(ids) - stored_ids) | unmatched),
        unfinished=unfinished,
        unfinished_attempts=[
            f"run {run} {step}#{attempt} {status} worker={worker or '-'} enqueued={enqueued}"
            f" started={started} heartbeat={beat}"
            for run, step, attempt, status, worker, enqueued, started, beat in attempts
        ],
        journal_gaps=gaps,
        missing_effects=missing,
        duplicated_effects=sorted(e for e, k in keys_by_event.items() if len(k) > 1),
        duplicate_runs=sorted(duplicate_runs),
        unexplained_dead_letters=unexplained,
        statuses=dict(statuses or {}),
    )


def pick(rng: random.Random, items: list):
    return items[rng.randrange(len(items))] if items else None
