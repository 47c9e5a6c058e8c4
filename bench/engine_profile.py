"""Where a step's time goes: one chain executed in this process with timers around the
parts of a step (bench.engine's last phase, unless --no-profile)."""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable
from typing import Any

from bench.engine_clients import Signalbox
from bench.engine_shapes import Shape
from bench.engine_stack import EngineStack, wait_until


def profile_chain(signalbox: Signalbox, shape: Shape, stack: EngineStack) -> dict:
    """Run one chain's steps here, one after another, timing the parts of each step.

    No worker is running: the bus consumer creates the run (and runs its first light steps
    itself, within its budget), then this loop calls execute_step for every queued attempt
    left as a worker task would (the Celery messages sent on
    commit are left unread); a light chain runs inside one such call, a step per
    transaction. Parts nest: write_result includes advance_locked; SQL, COMMIT, Channels
    pushes and Celery sends are counted wherever they happen. A step is counted at each
    lock_attempt (every step's transaction starts with it).
    """
    from celery.app.task import Task
    from django.db import DEFAULT_DB_ALIAS, connection, connections

    from workflows.core.states import StepStatus
    from workflows.live import notify
    from workflows.runs import advance as runs
    from workflows.runs import execution
    from workflows.runs.models import Run, StepRun
    from workflows.steps import registry

    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    statements: dict[str, int] = collections.defaultdict(int)  # SQL issued inside each part
    inside: list[str] = []  # the innermost part running now (empty: between steps)
    one_step: list[str] = []  # the statements of one step in the middle of the chain
    steps = [0]  # steps begun (each begins with lock_attempt)

    def timed(part: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            inside.append(part)
            try:
                return function(*args, **kwargs)
            finally:
                inside.pop()
                totals[part] += time.perf_counter() - began
                counts[part] += 1

        return wrapper

    def sql_timer(execute, query, params, many, context):
        if not inside:  # this loop's own query for the next step
            return execute(query, params, many, context)
        began = time.perf_counter()
        try:
            return execute(query, params, many, context)
        finally:
            totals["SQL statements"] += time.perf_counter() - began
            counts["SQL statements"] += 1
            statements[inside[-1]] += 1
            if steps[0] == shape.steps // 2:
                one_step.append(f"[{inside[-1].split(' (')[0].strip()}] {sql_shape(query)}")

    def counting(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            steps[0] += 1
            return function(*args, **kwargs)

        return wrapper

    patches: list[tuple[Any, str, Any]] = [
        (execution, "lock_attempt", "lock_attempt (attempt + run, run row locked)"),
        (execution, "claim", "claim (conditional UPDATE; side-effecting kinds)"),
        (execution, "mark_started", "mark_started (journal step.started, push)"),
        (execution, "build_context", "build_context"),
        (execution, "upstream_outputs", "upstream_outputs (referenced steps only)"),
        (execution, "secret_values", "secret_values (referenced secrets only)"),
        (execution, "record_result", "record_result (txn: result, journal, advance)"),
        (execution, "write_result", "write_result (claim+result, journal, advance)"),
        (runs, "advance_locked", "  advance_locked (decide, next step, run events)"),
        (runs, "emit_run_events", "  emit_run_events"),
        (notify, "_send", "Channels push (a group_send to 2 groups)"),
        (Task, "apply_async", "Celery send (next step, run finished)"),
        (type(connections[DEFAULT_DB_ALIAS]), "_commit", "COMMIT"),
    ]
    for kind in ("log", "transform"):
        patches.append((type(registry.get(kind)), "execute", f"step kind {kind}"))
    # The code measured moves on: a part that is gone is left out rather than failing.
    patches = [(owner, name, part) for owner, name, part in patches if hasattr(owner, name)]
    # (owner, name, the owner's own attribute or None when it is inherited)
    originals = [(owner, name, owner.__dict__.get(name)) for owner, name, _part in patches]

    event_ids = signalbox.send(shape, "profile", [0])

    def run_created() -> bool:
        return Run.objects.filter(event_id__in=event_ids).exists()

    if not wait_until(run_created, timeout=60, alive=stack.check_alive):
        return {"note": "the bus consumer did not create the run"}
    run = Run.objects.get(event_id=event_ids[0])
    began = time.perf_counter()
    try:
        for owner, name, part in patches:
            setattr(owner, name, timed(part, getattr(owner, name)))
        execution.lock_attempt = counting(execution.lock_attempt)
        with connection.execute_wrapper(sql_timer):
            while True:
                queued = StepRun.objects.filter(run=run, status=StepStatus.QUEUED).order_by("id")
                step_run_id = queued.values_list("pk", flat=True).first()
                if step_run_id is None:
                    break
                # Counted once per task: workers keep their connection between tasks now, but
                # a task may be the first on a new one (CONN_MAX_AGE, a recycled process).
                connections.close_all()
                t0 = time.perf_counter()
                connection.ensure_connection()
                totals["new database connection"] += time.perf_counter() - t0
                counts["new database connection"] += 1
                timed("execute_step (whole task)", execution.execute_step)(
                    step_run_id=step_run_id, worker="bench-profile"
                )
    finally:
        for owner, name, original in originals:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
    elapsed = time.perf_counter() - began
    run.refresh_from_db()
    kinds = [part for _o, _n, part in patches if part.startswith("step kind")]
    totals["step kinds (log/transform)"] = sum(totals.pop(k, 0.0) for k in kinds)
    counts["step kinds (log/transform)"] = sum(counts.pop(k, 0) for k in kinds)
    statements["step kinds (log/transform)"] = sum(statements.pop(k, 0) for k in kinds)
    per_step = {
        part: {
            "ms_per_step": round(totals[part] * 1000 / max(steps[0], 1), 2),
            "calls_per_step": round(counts[part] / max(steps[0], 1), 2),
            "own_sql_per_step": round(statements.get(part, 0) / max(steps[0], 1), 2),
        }
        for part in totals
    }
    return {
        "shape": shape.key,
        "steps": steps[0],
        "run_status": run.status,
        "wall_s": round(elapsed, 3),
        "parts": per_step,
        "sql_of_one_step": one_step,
    }


def sql_shape(query: str) -> str:
    """`SELECT … FROM "workflows_steprun" …` -> `SELECT workflows_steprun`."""
    words = query.replace('"', "").split()
    verb = words[0].upper() if words else "?"
    table = ""
    for marker in ("FROM", "INTO", "UPDATE"):
        if marker in (w.upper() for w in words):
            index = [w.upper() for w in words].index(marker)
            table = words[index + 1] if index + 1 < len(words) else ""
            break
    return f"{verb} {table}".strip()
