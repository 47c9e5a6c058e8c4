"""bench.engine's two systems under test, sent the same shapes: Signalbox (events through
the ingest service, runs read back from the database) and the bare Celery baseline."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench.engine_report import Measurement
from bench.engine_shapes import CELERY, SHAPES, SIGNALBOX, SOURCE, Shape, baseline_app
from bench.engine_stack import EngineStack, wait_until


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def ms(later, earlier) -> float:
    return (later - earlier).total_seconds() * 1000


# When each run is seen done, by a thread of this process on each side, one hop after its
# end is durable: for Signalbox a NOTIFY that PostgreSQL delivers once the transaction that
# finished the run has committed (a trigger of this throwaway database only); for the
# baseline the message its last task pushes to Redis. Run.finished_at is stamped before the
# commit (and the journal and run event writes that precede it), so it would leave our
# commit out while the baseline's end is its task's; the notes are also why a poll interval
# never counts.
DONE_CHANNEL = "bench_run_done"
DONE_TRIGGER = f"""
CREATE OR REPLACE FUNCTION bench_run_done() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{DONE_CHANNEL}', NEW.event_id::text);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_run_done_update AFTER UPDATE ON workflows_run FOR EACH ROW
    WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL)
    EXECUTE FUNCTION bench_run_done();
CREATE TRIGGER bench_run_done_insert AFTER INSERT ON workflows_run FOR EACH ROW
    WHEN (NEW.finished_at IS NOT NULL) EXECUTE FUNCTION bench_run_done();
"""


class Seen:
    """A thread noting time.time() when each run is first seen done."""

    def __init__(self, listen: Callable[..., None]):
        self.at: dict[str, float] = {}
        self.stopped = threading.Event()
        ready = threading.Event()

        def note(key: str) -> None:
            self.at.setdefault(key, time.time())

        def run() -> None:
            listen(note, ready, self.stopped)

        self.thread = threading.Thread(target=run, name="bench-seen", daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("the done listener did not start")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)  # it wakes every 0.5 s to look


def listen_postgres(database_url: str):
    import psycopg

    def listen(note, ready, stopped) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"LISTEN {DONE_CHANNEL}")
            ready.set()
            try:
                while not stopped.is_set():
                    for notice in conn.notifies(timeout=0.5):
                        note(notice.payload)
            except psycopg.OperationalError:
                if not stopped.is_set():
                    raise
                # else the stack dropped its database as we were told to stop: done

    return listen


def listen_redis(client, key: str):
    def listen(note, ready, stopped) -> None:
        ready.set()
        while not stopped.is_set():
            got = client.blpop([key], timeout=0.5)
            if got:
                note(got[1].decode())

    return listen


class Signalbox:
    """Send events through the ingest service here; note when each run is seen done (a
    NOTIFY after its commit); read the rest back from the database."""

    def __init__(self, stack: EngineStack, tag: str):
        from django.db import connection

        self.stack = stack
        self.tag = tag
        with connection.cursor() as cursor:
            cursor.execute(DONE_TRIGGER)
        self.seen = Seen(listen_postgres(stack.database_url))

    def publish(self, shapes: Iterable[Shape]) -> None:
        from workflows.authoring.definitions import publish_workflow, put_workflow

        for shape in {s.slug: s for s in shapes}.values():
            put_workflow(slug=shape.slug, raw=shape.definition())
            publish_workflow(slug=shape.slug, note="bench/engine")

    def send(self, shape: Shape, label: str, numbers: Iterable[int]) -> list[int]:
        from workflows.events.envelope import Envelope
        from workflows.runs.matching import ingest_event

        ids = []
        for n in numbers:
            event, _created = ingest_event(
                envelope=Envelope(
                    id=f"{self.tag}-{label}-{n}",
                    source=SOURCE,
                    type=shape.event_type,
                    data={"order": n},
                )
            )
            ids.append(event.pk)
        return ids

    def wait_for_worker(self, timeout: float) -> None:
        """Until the worker started last answers a ping, then send each of its processes a
        no-op step task (an attempt that does not exist): imports and a connection."""
        from orchestrator.celery import app
        from workflows.tasks import execute_step_task

        name = f"{self.stack.worker}-{self.stack.tag}@"

        def answered() -> bool:
            replies = app.control.ping(timeout=0.5)
            return any(host.startswith(name) for reply in replies for host in reply)

        if not wait_until(answered, timeout=timeout, alive=self.stack.check_alive):
            raise RuntimeError(f"the worker {name} did not answer a ping in {timeout:.0f} s")
        for _ in range(4):
            execute_step_task.delay(0)

    def wait(self, event_ids: list[int], timeout: float) -> bool:
        keys = [str(pk) for pk in event_ids]
        return wait_until(
            lambda: all(key in self.seen.at for key in keys),
            timeout=timeout,
            alive=self.stack.check_alive,
        )

    def measure(self, shape: Shape, workers: int, runs: int, label: str) -> Measurement:
        timeout = 120 + 1.0 * runs * shape.steps  # a safety net, far above a normal run
        event_ids: list[int] = []
        complete = True
        if shape.one_at_a_time:
            for n in range(runs):
                batch = self.send(shape, label, [n])
                event_ids += batch
                complete = self.wait(batch, timeout) and complete
        else:
            event_ids = self.send(shape, label, range(runs))
            complete = self.wait(event_ids, timeout)
        return self.result(shape, workers, event_ids, complete, timeout)

    def result(
        self, shape: Shape, workers: int, event_ids: list[int], complete: bool, timeout: float
    ) -> Measurement:
        from workflows.core.states import RunStatus
        from workflows.events.models import Event
        from workflows.runs.models import Run, StepRun

        received = dict(Event.objects.filter(pk__in=event_ids).values_list("pk", "received_at"))
        runs = list(
            Run.objects.filter(event_id__in=event_ids, finished_at__isnull=False).values_list(
                "pk", "event_id", "status", "created_at", "finished_at"
            )
        )
        seen = self.seen.at
        latencies = [
            (seen[str(event)] - received[event].timestamp()) * 1000
            for _pk, event, _s, _c, _f in runs
            if str(event) in seen
        ]
        first = min(received.values()).timestamp()
        last = max((seen[str(r[1])] for r in runs if str(r[1]) in seen), default=None)
        steps = list(
            StepRun.objects.filter(run_id__in=[r[0] for r in runs]).values_list(
                "run_id", "enqueued_at", "started_at", "finished_at"
            )
        )
        first_start: dict[int, Any] = {}
        for run_id, _enqueued, started, _finished in steps:
            if started and (run_id not in first_start or started < first_start[run_id]):
                first_start[run_id] = started
        created = {pk: (received[event], created) for pk, event, _s, created, _f in runs}
        breakdown = {
            # the old end: Run.finished_at, stamped before the run's last writes and commit
            "accepted_to_finished_at_ms": median(ms(f, received[e]) for _p, e, _s, _c, f in runs),
            # ingest commit -> bus -> consumer matched the event and created the run
            "accepted_to_run_created_ms": median(ms(c, r) for r, c in created.values()),
            "accepted_to_first_step_started_ms": median(
                ms(started, created[pk][0]) for pk, started in first_start.items()
            ),
            # the Celery hop: step row written (enqueue on commit) -> a worker claimed it
            "step_enqueued_to_started_ms": median(ms(s, e) for _r, e, s, _f in steps if e and s),
            # claimed -> result recorded: journal, context, the step itself, the result
            "step_started_to_finished_ms": median(ms(f, s) for _r, _e, s, f in steps if s and f),
        }
        failed = sum(1 for r in runs if r[2] != RunStatus.SUCCEEDED)
        note = "" if complete else f"{len(runs)} of {len(event_ids)} finished in {timeout:.0f}s"
        if failed:
            note = f"{failed} run(s) did not succeed; " + note
        return Measurement(
            SIGNALBOX,
            shape.key,
            workers,
            len(event_ids),
            shape.steps,
            (last - first) if last else 0.0,
            latencies,
            failed,
            note,
            {k: round(v, 2) for k, v in breakdown.items()},
        )


class Baseline:
    """Send the same shapes to the plain Celery app; its last task tells this process."""

    def __init__(self, stack: EngineStack, tag: str):
        self.stack = stack
        self.tag = tag
        engine_baseline = baseline_app()
        self.seen = Seen(listen_redis(engine_baseline._redis(), engine_baseline.done_list_key()))

    def send(self, shape: Shape, label: str, numbers: Iterable[int]) -> dict[str, float]:
        signatures = {f"{self.tag}-{label}-{n}": None for n in numbers}
        for run in signatures:
            signatures[run] = shape.baseline(run)  # built before the clock starts
        sent = {}
        for run, signature in signatures.items():
            sent[run] = time.time()
            signature.apply_async()
        return sent

    def finished(self, runs: Iterable[str]) -> dict[str, float]:
        """When this process saw each run done (its last task's message)."""
        return {run: self.seen.at[run] for run in runs if run in self.seen.at}

    def wait(self, runs: list[str], timeout: float) -> bool:
        return wait_until(
            lambda: len(self.finished(runs)) >= len(runs),
            timeout=timeout,
            alive=self.stack.check_alive,
        )

    def measure(self, shape: Shape, workers: int, runs: int, label: str) -> Measurement:
        timeout = 60 + 0.1 * runs * shape.steps
        sent: dict[str, float] = {}
        complete = True
        if shape.one_at_a_time:
            for n in range(runs):
                batch = self.send(shape, label, [n])
                sent.update(batch)
                complete = self.wait(list(batch), timeout) and complete
        else:
            sent = self.send(shape, label, range(runs))
            complete = self.wait(list(sent), timeout)
        finished = self.finished(sent)
        latencies = [(finished[run] - sent[run]) * 1000 for run in finished]
        seconds = max(finished.values()) - min(sent.values()) if finished else 0.0
        note = "" if complete else f"{len(finished)} of {len(sent)} finished in {timeout:.0f}s"
        return Measurement(CELERY, shape.key, workers, len(sent), shape.steps, seconds,
                           latencies, note=note)  # fmt: skip


# The warm-up sends these shapes whatever --shapes measures: they are published with them.
WARM_UP_SHAPES = [s for s in SHAPES if s.key in ("1-step", "3-step")]


def warm_up(system, workers: int, label: str) -> None:
    """Wait for the worker and warm its processes (imports, connections): a few short runs
    at once, so every process of the pool gets some. The big shapes are not warmed: parsing
    their definition once per process costs milliseconds against their seconds."""
    if isinstance(system, Signalbox):
        # The bus consumer runs light runs itself: their finishing says nothing of the
        # worker, which must be up before the clock starts (it takes what passes the
        # consumer's budget).
        system.wait_for_worker(timeout=180)
    pending = []
    for shape in WARM_UP_SHAPES:
        count = 3 * workers if shape.steps == 1 else workers
        pending.append((shape, system.send(shape, f"{label}-{shape.key}", range(count))))
    for shape, sent in pending:
        if not system.wait(list(sent), timeout=180):
            raise RuntimeError(f"{label}: warm-up runs of {shape.key} did not finish")
