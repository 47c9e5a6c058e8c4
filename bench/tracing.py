"""What the tracing hooks cost: per event with one step that calls out over HTTP and emits.

    python -m bench.tracing                  # off, then on (exporting to a loopback receiver)
    python -m bench.tracing --events 20000

One "event" passes through every hook the real path does: the ingest span, the bus
delivery, a run's start, a step attempt (and its outcome), an outgoing HTTP call's headers
and an emitted event's span, with the log-id bindings. No database, no network besides the
loopback OTLP receiver (tests/otlp_receiver.py) the spans are exported to when on: this
isolates the hooks from the work they wrap. CPU time is the process's (every thread: the
exporter's batching and encoding count), so the "on" figure includes exporting.

For scale, docs/benchmarks.md puts a light step at ~5.7 ms in-process and a one-step run at
~6 ms of CPU; the whole-stack comparison (`make bench-engine` with SIGNALBOX_TRACING off and
on, back to back) is recorded there too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Figure:
    mode: str
    events: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6


def one_event(tracing, index: int) -> None:
    from workflows.events.envelope import Envelope

    envelope = Envelope(id=f"e-{index}", source="/bench", type="bench.traced", extensions={})
    ingest = tracing.ingest([envelope], header=INCOMING, channel="http")
    ingest.end(stored=1)
    event = SimpleNamespace(
        pk=index,
        ce_id=envelope.id,
        source=envelope.source,
        type=envelope.type,
        correlation_id=envelope.id,
        extensions=envelope.extensions,
    )
    with tracing.delivery(event, ingest.traceparent):
        started = tracing.run_span(workflow="bench")
        run = SimpleNamespace(
            pk=index,
            origin="trigger",
            event_id=index,
            correlation_id=envelope.id,
            traceparent=started.traceparent,
            version_id=1,
        )
        started.end(run)
    step = SimpleNamespace(id="call", kind="http_request")
    attempt = SimpleNamespace(attempt=1)
    with tracing.step_attempt(run, step, attempt, trigger=envelope.extensions) as scope:
        with tracing.outgoing_http("POST", "http://127.0.0.1:9/hook", trigger=envelope.extensions):
            pass
        with tracing.emitting("bench.told"):
            tracing.current_traceparent()
        tracing.finished(scope, SimpleNamespace(succeeded=True, code="", error=""))


def bare_event(_tracing, index: int) -> None:
    """The same objects, no hook: what the hooks are measured against."""
    from workflows.events.envelope import Envelope

    envelope = Envelope(id=f"e-{index}", source="/bench", type="bench.traced", extensions={})
    SimpleNamespace(pk=index, ce_id=envelope.id, source=envelope.source, type=envelope.type)
    SimpleNamespace(pk=index, origin="trigger", event_id=index, traceparent="", version_id=1)
    SimpleNamespace(id="call", kind="http_request"), SimpleNamespace(attempt=1)
    SimpleNamespace(succeeded=True, code="", error="")


def measure(tracing, mode: str, events: int) -> Figure:
    body = bare_event if mode == "bare" else one_event
    for index in range(min(500, events)):  # warm up (imports, first spans)
        body(tracing, index)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(events):
        body(tracing, index)
    if mode == "on":
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()
    return Figure(mode, events, time.process_time() - cpu, time.perf_counter() - wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10000)
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()
    from django.conf import settings

    from tests.otlp_receiver import OtlpReceiver
    from workflows.infra import tracing

    load = os.getloadavg()
    tracing.reset_for_tests(False)
    bare = measure(tracing, "bare", args.events)
    off = measure(tracing, "off", args.events)

    receiver = OtlpReceiver()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    settings.SIGNALBOX_TRACING = "otlp"
    tracing.reset_for_tests(None)
    on = measure(tracing, "on", args.events)
    received = len(receiver.spans)
    receiver.close()
    load_after = os.getloadavg()

    report = {
        "events": args.events,
        "load_average_before": load,
        "load_average_after": load_after,
        "bare_cpu_us_per_event": round(bare.cpu_us_per_event, 2),
        "off_cpu_us_per_event": round(off.cpu_us_per_event, 2),
        "off_hooks_us_per_event": round(off.cpu_us_per_event - bare.cpu_us_per_event, 2),
        "on_cpu_us_per_event": round(on.cpu_us_per_event, 2),
        "on_over_off": round(on.cpu_us_per_event / off.cpu_us_per_event, 1),
        "spans_received": received,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
