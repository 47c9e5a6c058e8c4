"""The state of an installation's processes and plumbing, read by the dashboard's workers
page and by `manage.py status`: Celery workers online (their queues, active tasks), the
bus consumer's and the scheduler's heartbeats, the web processes' (one per process,
workflows/operations/web_heartbeat.py), queue depths, bus partitions with lag, dead letters waiting,
broker connections and circuit breakers.

`snapshot()` gathers; `assess()` judges a snapshot as ok, degraded or down, one check at a
time, so a health check (exit code) and a person (the text) read the same verdict.

Asking Celery's workers is a broadcast that waits its whole timeout for replies (nobody
knows how many workers there are), so callers choose a short one.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection

from workflows.infra import circuit, heartbeat
from workflows.operations import web_heartbeat
from workflows.runs import gauges, step_queues

INSPECT_TIMEOUT = 1.0
COMPONENTS = ("scheduler", "bus-consumer")
INSPECT_QUESTIONS = ("stats", "active", "active_queues")
OK, DEGRADED, DOWN = "ok", "degraded", "down"
EXIT_CODES = {OK: 0, DEGRADED: 1, DOWN: 2}
# Without a bus consumer no event starts a run: the installation takes events but does
# nothing with them. Without the scheduler, retries, timers and the outbox relay wait.
COMPONENT_MISSING = {"bus-consumer": DOWN, "scheduler": DEGRADED}


def celery_workers(timeout: float = INSPECT_TIMEOUT) -> tuple[list[dict[str, Any]], str]:
    """Workers that answered within `timeout`, and an error text when asking failed."""
    from orchestrator.celery import app

    def ask(question: str) -> dict:
        return getattr(app.control.inspect(timeout=timeout), question)() or {}

    try:
        # Each question waits its whole timeout: asked side by side, they take one.
        with ThreadPoolExecutor(len(INSPECT_QUESTIONS), "inspect") as pool:
            stats, active, queues = pool.map(ask, INSPECT_QUESTIONS)
    except Exception as exc:  # noqa: BLE001 - the broker is away: say so
        return [], f"could not ask the workers: {exc}"
    workers = []
    for name in sorted(set(stats) | set(active) | set(queues)):
        info = stats.get(name) or {}
        pool = info.get("pool") or {}
        workers.append(
            {
                "name": name,
                "pid": info.get("pid"),
                "uptime": info.get("uptime"),
                "concurrency": pool.get("max-concurrency"),
                "processed": sum((info.get("total") or {}).values()),
                "queues": [q.get("name") for q in queues.get(name) or []],
                "active": [
                    {
                        "id": task.get("id"),
                        "name": task.get("name"),
                        "args": task.get("args"),
                        "started": task.get("time_start"),
                    }
                    for task in active.get(name) or []
                ],
            }
        )
    return workers, ""


def component_beats() -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for component in COMPONENTS:
        try:
            beat = heartbeat.last_beat(component)
        except Exception:  # noqa: BLE001 - Redis away
            beat = None
        out.append(
            {
                "name": component,
                "alive": beat is not None,
                "seconds_ago": round(now - beat, 1) if beat else None,
            }
        )
    return out


def web_processes() -> tuple[list[dict[str, Any]], str]:
    """The web processes beating now, and an error text when Redis could not be read."""
    try:
        return web_heartbeat.processes(), ""
    except Exception as exc:  # noqa: BLE001 - Redis away: say so
        return [], f"could not read the web heartbeats: {exc}"


def system(
    timeout: float = INSPECT_TIMEOUT, *, workers: tuple[list, str] | None = None
) -> dict[str, Any]:
    """What the workers page shows; `workers` is an answer of celery_workers() already
    at hand (the page's cache), else the workers are asked."""
    from workflows.events.connections import connection_health

    workers, worker_error = workers if workers is not None else celery_workers(timeout)
    queue_names = list(
        dict.fromkeys(
            [*step_queues.all_queues(), *sorted(q for w in workers for q in w["queues"] if q)]
        )
    )
    web, web_error = web_processes()
    try:
        circuits = [c.as_dict() for c in circuit.circuits()]
        circuit_error = ""
    except Exception as exc:  # noqa: BLE001 - Redis away
        circuits, circuit_error = [], f"could not read the circuit breakers: {exc}"
    try:
        broker_connections, connection_error = connection_health(), ""
    except Exception as exc:  # noqa: BLE001 - the database away: say so on the page
        broker_connections, connection_error = [], f"could not read the connections: {exc}"
    return {
        "workers": workers,
        "worker_error": worker_error,
        "queues": gauges.queue_lengths(queue_names),
        "partitions": gauges.bus_partitions(),
        "bus_group": settings.SIGNALBOX["BUS_GROUP"],
        "components": component_beats(),
        "web": web,
        "web_error": web_error,
        "circuits": circuits,
        "circuit_error": circuit_error,
        "connections": broker_connections,
        "connection_error": connection_error,
        "checked_at": time.time(),
    }


# --- the verdict, for `manage.py status` --------------------------------------------------------
@dataclass
class Check:
    name: str
    level: str  # ok, degraded, down
    detail: str


@dataclass
class Limits:
    """Thresholds beyond which a figure makes the installation degraded (None: not judged)."""

    max_bus_lag: int | None = 10_000
    max_queue_depth: int | None = None
    max_dead_letters: int | None = None


@dataclass
class Report:
    status: str
    checks: list[Check]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "checks": [asdict(c) for c in self.checks],
            **self.facts,
        }


def _database() -> Check:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the finding
        return Check("database", DOWN, f"cannot reach the database: {exc}")
    return Check("database", OK, f"{connection.vendor} answers")


def _redis() -> Check:
    from workflows.infra.redis_client import client

    try:
        client().ping()
    except Exception as exc:  # noqa: BLE001
        return Check("redis", DOWN, f"cannot reach Redis: {exc}")
    return Check("redis", OK, "answers")


def _dead_letters() -> dict[str, int] | None:
    from django.db.models import Count

    from workflows.events.models import DeadLetter

    try:
        rows = (
            DeadLetter.objects.filter(resolved_at__isnull=True)
            .values_list("kind")
            .annotate(n=Count("id"))
            .order_by()
        )
        return {kind: n for kind, n in rows}
    except Exception:  # noqa: BLE001 - reported by the database check
        return None


def assess(*, limits: Limits | None = None, timeout: float = INSPECT_TIMEOUT) -> Report:
    """Gather the installation's state and judge it: down when it cannot do its work (no
    database, no Redis, no worker, no bus consumer, no web process: nothing takes HTTP
    events, webhooks, the API or the dashboard), degraded when it does only part of it
    or falls behind (no scheduler, a queue no worker serves, lag or backlog beyond the
    limits, an open circuit breaker), ok otherwise."""
    limits = limits or Limits()
    checks = [_database(), _redis()]
    if checks[1].level == DOWN:
        # Redis is the broker: asking the workers would wait on reconnects, and every
        # other figure lives there too.
        checks.append(Check("workers", DOWN, "not asked: Redis, their broker, is away"))
        return Report(DOWN, checks)
    state = system(timeout)
    workers = state["workers"]
    served = {q for w in workers for q in w["queues"]}
    if workers:
        checks.append(Check("workers", OK, f"{len(workers)} Celery worker(s) answered"))
    else:
        detail = state["worker_error"] or f"no Celery worker answered within {timeout:g} s"
        checks.append(Check("workers", DOWN, detail))
    web = state["web"]
    if web:
        newest = min(p["seconds_ago"] for p in web)
        checks.append(
            Check("web", OK, f"{len(web)} web process(es), last heartbeat {newest} s ago")
        )
    else:
        ttl = settings.SIGNALBOX["HEARTBEAT_TTL_SECONDS"]
        detail = state["web_error"] or f"no web process heartbeat within the last {ttl} s"
        checks.append(Check("web", DOWN, detail))
    for component in state["components"]:
        name = component["name"]
        if component["alive"]:
            checks.append(Check(name, OK, f"heartbeat {component['seconds_ago']} s ago"))
        else:
            ttl = settings.SIGNALBOX["HEARTBEAT_TTL_SECONDS"]
            checks.append(
                Check(name, COMPONENT_MISSING[name], f"no heartbeat within the last {ttl} s")
            )
    queues = state["queues"]
    routes = step_queues.routes()
    for name in step_queues.all_queues():
        depth = queues.get(name)
        kinds = routes.get(name) or []
        what = f"{name} ({', '.join(kinds)})" if kinds else name
        if workers and name not in served:
            checks.append(
                Check(f"queue {name}", DEGRADED, f"no worker consumes {what}; depth {depth}")
            )
        elif (
            depth is not None
            and limits.max_queue_depth is not None
            and (depth > limits.max_queue_depth)
        ):
            checks.append(
                Check(
                    f"queue {name}",
                    DEGRADED,
                    f"{depth} messages waiting (limit {limits.max_queue_depth})",
                )
            )
        else:
            checks.append(Check(f"queue {name}", OK, f"{depth} waiting"))
    partitions = state["partitions"]
    lag = sum(p.lag or 0 for p in partitions)
    pending = sum(p.pending or 0 for p in partitions)
    if limits.max_bus_lag is not None and lag > limits.max_bus_lag:
        checks.append(Check("bus", DEGRADED, f"lag {lag} (limit {limits.max_bus_lag})"))
    else:
        checks.append(Check("bus", OK, f"lag {lag}, pending {pending}"))
    letters = _dead_letters()
    waiting = sum(letters.values()) if letters else 0
    if limits.max_dead_letters is not None and waiting > limits.max_dead_letters:
        checks.append(
            Check("dead letters", DEGRADED, f"{waiting} waiting (limit {limits.max_dead_letters})")
        )
    else:
        checks.append(Check("dead letters", OK, f"{waiting} waiting"))
    open_breakers = [c for c in state["circuits"] if c["state"] != "closed"]
    if open_breakers:
        hosts = ", ".join(f"{c['host']} ({c['state']})" for c in open_breakers)
        checks.append(Check("circuit breakers", DEGRADED, hosts))
    else:
        checks.append(Check("circuit breakers", OK, "all closed"))
    levels = {c.level for c in checks}
    status = DOWN if DOWN in levels else DEGRADED if DEGRADED in levels else OK
    facts = {
        "workers": [
            {k: w[k] for k in ("name", "pid", "uptime", "concurrency", "processed", "queues")}
            | {"active": len(w["active"])}
            for w in workers
        ],
        "web": web,
        "components": state["components"],
        "queues": queues,
        "routes": routes,
        "bus": {
            "lag": lag,
            "pending": pending,
            "partitions": [asdict(p) for p in partitions],
        },
        "dead_letters": letters,
        "circuits": state["circuits"],
    }
    return Report(status, checks, facts)
