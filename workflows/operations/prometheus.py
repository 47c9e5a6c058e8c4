"""Prometheus metrics, read from the same truth as the dashboard at scrape time.

Counters live in Redis hashes that every process increments (workflows.infra.counters: the web
process, workers and the bus consumer all publish events), so any web process can serve the
whole installation's figures and none has to aggregate its siblings. Counters start again
from zero when Redis loses its data; Prometheus reads a drop as a counter reset, which
`rate()` handles. Gauges are read when scraped: queue depth and bus lag from Redis, runs in
flight and dead letters waiting from the database (small, indexed sets), breaker states,
component heartbeats.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from django.db.models import Count
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from workflows.core.states import RunStatus, StepStatus
from workflows.events.models import DeadLetter
from workflows.infra import circuit, heartbeat, step_metrics
from workflows.infra.counters import EVENTS_KEY, INGEST_KEY, RUNS_KEY
from workflows.infra.redis_client import client, key
from workflows.live import socket_clients
from workflows.runs import gauges
from workflows.runs.models import Run, StepRun

COMPONENTS = ("bus-consumer", "scheduler")
IN_FLIGHT_RUNS = (RunStatus.QUEUED, RunStatus.RUNNING)
IN_FLIGHT_STEPS = (StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.WAITING)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class SignalboxCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._steps_and_sockets()
        yield from self._bus_and_queues()
        yield from self._database()
        yield from self._breakers()
        yield from self._components()

    def _counters(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "signalbox_events_published",
            "Events put on the bus for the first time, by the channel they came in on.",
            labels=["channel"],
        )
        runs = CounterMetricFamily(
            "signalbox_runs",
            "Runs started and finished, by workflow and outcome (started, succeeded, "
            "failed, cancelled).",
            labels=["workflow", "outcome"],
        )
        try:
            pipe = client().pipeline(transaction=False)
            pipe.hgetall(key(*EVENTS_KEY))
            pipe.hgetall(key(*RUNS_KEY))
            pipe.hgetall(key(*INGEST_KEY))
            by_channel, by_run, by_answer = pipe.execute()
        except redis.RedisError:
            by_channel, by_run, by_answer = {}, {}, {}
        ingest = CounterMetricFamily(
            "signalbox_ingest",
            "Events offered, by channel and result: accepted (stored and published), "
            "duplicate, rejected (invalid, unauthorised, too large), rate_limited, unavailable.",
            labels=["channel", "result"],
        )
        for channel, value in sorted(by_channel.items()):
            events.add_metric([channel], float(value))
            ingest.add_metric([channel, "accepted"], float(value))
        for field, value in sorted(by_answer.items()):
            channel, _, result = field.partition("\t")
            ingest.add_metric([channel, result], float(value))
        for field, value in sorted(by_run.items()):
            workflow, _, outcome = field.partition("\t")
            runs.add_metric([workflow, outcome], float(value))
        yield events
        yield runs
        yield ingest

    def _steps_and_sockets(self) -> Iterator[Metric]:
        durations = HistogramMetricFamily(
            "signalbox_step_duration_seconds",
            "Time a worker (or the bus consumer) spent running a step attempt, by kind and "
            "outcome; waits for timers, events and child runs are not included.",
            labels=["kind", "outcome"],
        )
        sockets = GaugeMetricFamily(
            "signalbox_websocket_clients",
            "WebSocket clients connected to every web process, by page.",
            labels=["page"],
        )
        try:
            observed = step_metrics.read()
            connected = socket_clients.totals()
        except redis.RedisError:
            observed, connected = {}, {}
        for (kind, outcome), (buckets, _count, total) in observed.items():
            durations.add_metric([kind, outcome], buckets, total)
        for page, n in sorted(connected.items()):
            sockets.add_metric([page], float(n))
        yield durations
        yield sockets

    def _bus_and_queues(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "signalbox_bus_lag",
            "Bus entries the consumer group has not read yet, per partition.",
            labels=["partition"],
        )
        pending = GaugeMetricFamily(
            "signalbox_bus_pending",
            "Bus entries read but not yet acknowledged, per partition.",
            labels=["partition"],
        )
        length = GaugeMetricFamily(
            "signalbox_bus_stream_length", "Entries kept in each partition.", labels=["partition"]
        )
        for row in gauges.bus_partitions():
            label = [str(row.partition)]
            for family, value in ((lag, row.lag), (pending, row.pending), (length, row.length)):
                if value is not None:
                    family.add_metric(label, float(value))
        queue = GaugeMetricFamily(
            "signalbox_queue_depth", "Celery messages waiting in each queue.", labels=["queue"]
        )
        for name, depth in gauges.queue_lengths().items():
            if depth is not None:
                queue.add_metric([name], float(depth))
        yield from (lag, pending, length, queue)

    def _database(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily(
            "signalbox_runs_in_flight",
            "Runs queued or running, by workflow and status.",
            labels=["workflow", "status"],
        )
        rows = (
            Run.objects.filter(status__in=IN_FLIGHT_RUNS)
            .values_list("workflow__slug", "status")
            .annotate(n=Count("id"))
            .order_by()
        )
        for slug, status, n in rows:
            runs.add_metric([slug, status], float(n))
        steps = GaugeMetricFamily(
            "signalbox_step_attempts_in_flight",
            "Step attempts queued, running or waiting (timers, events, child runs).",
            labels=["status"],
        )
        counts = dict(
            StepRun.objects.filter(status__in=IN_FLIGHT_STEPS)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by()
        )
        for status in IN_FLIGHT_STEPS:
            steps.add_metric([status], float(counts.get(status, 0)))
        letters = GaugeMetricFamily(
            "signalbox_dead_letters_waiting",
            "Dead letters with no decision yet, by kind.",
            labels=["kind"],
        )
        for kind, n in (
            DeadLetter.objects.filter(resolved_at__isnull=True)
            .values_list("kind")
            .annotate(n=Count("id"))
            .order_by()
        ):
            letters.add_metric([kind], float(n))
        yield from (runs, steps, letters)

    def _breakers(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "signalbox_circuit_state",
            "Circuit breaker per outbound host: 0 closed, 1 half-open, 2 open.",
            labels=["host"],
        )
        try:
            known = circuit.circuits()
        except redis.RedisError:
            known = []
        for breaker in known:
            state.add_metric([breaker.host], float(BREAKER_STATES.get(breaker.state, 0)))
        yield state

    def _components(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "signalbox_component_heartbeat_age_seconds",
            "Seconds since the bus consumer or the scheduler last said it was alive "
            "(absent: no beat within the heartbeat TTL).",
            labels=["component"],
        )
        now = time.time()
        for component in COMPONENTS:
            try:
                beat = heartbeat.last_beat(component)
            except redis.RedisError:
                beat = None
            if beat is not None:
                age.add_metric([component], max(0.0, now - beat))
        yield age
