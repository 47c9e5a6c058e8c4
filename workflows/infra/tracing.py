"""Tracing with OpenTelemetry, and the ids every log record carries.

One trace follows an event through Signalbox, across processes, linked by W3C Trace Context:

    signalbox.ingest   (web, connectors, scheduler)
                                     the request (HTTP or webhook), broker message or
                                     schedule tick that stored the event
    signalbox.deliver  (bus)         the bus entry matched to triggers and waiting runs
    signalbox.run      (bus/web)     a run started (a replay starts a new trace, linked)
    signalbox.step     (worker/bus)  each attempt of each step
    GET|POST|…         (worker)      an http_request step's call, whose `traceparent` it sends
    signalbox.emit     (worker)      an emit_event step's event, whose `traceparent` it sets

The context crosses processes in what is stored anyway: the event's CloudEvents
`traceparent` extension (kept as the producer sent it, or set to the ingest span when the
event came without one), the bus entry (`tp`: the ingest span, the parent of the delivery),
and `Run.traceparent` (the run span, the parent of every attempt, in any worker, at any
time later).

Off by default (`SIGNALBOX_TRACING=off`): no tracer provider is set up and no exporter
loaded (this module imports no OpenTelemetry code then), every hook returns a no-op object,
and only a trace context the event already carried is passed on (outgoing requests'
`traceparent`, emitted events' extension). With
`SIGNALBOX_TRACING=otlp` spans are exported over OTLP/HTTP, configured by the standard
OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, …).

No Django at import time: the step kinds import this module and must stay free of it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from workflows.core.lineage import valid_traceparent  # one W3C check for the whole project

log = logging.getLogger("signalbox.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACER_NAME = "signalbox"

_enabled: bool | None = None
_lock = threading.Lock()
_tracer: Any = None
_provider: Any = None  # this process's TracerProvider (tracing on): flushed at shutdown


# --- the switch ------------------------------------------------------------------------------
def mode() -> str:
    """`otlp` or `off`: settings.SIGNALBOX_TRACING when Django is configured, else the
    environment (the same variable)."""
    try:
        from django.conf import settings

        if settings.configured:
            return str(getattr(settings, "SIGNALBOX_TRACING", "off")).strip().lower()
    except ImportError:  # pragma: no cover - Django is always installed here
        pass
    return os.environ.get("SIGNALBOX_TRACING", "off").strip().lower()


def enabled() -> bool:
    """Whether this process exports spans; decided once, at the first hook."""
    if _enabled is None:
        _configure()
    return bool(_enabled)


def _configure() -> None:
    global _enabled, _tracer, _provider
    with _lock:
        if _enabled is not None:
            return
        chosen = mode()
        if chosen in ("", "off", "none", "0", "false"):
            _enabled = False
            return
        if chosen != "otlp":
            log.warning("SIGNALBOX_TRACING=%r is not otlp or off: tracing stays off", chosen)
            _enabled = False
            return
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME") or "signalbox",
                "process.pid": os.getpid(),
            }
        )
        provider = TracerProvider(resource=resource)
        # Batched on a thread of its own (re-made after a fork: Celery's pool children);
        # the endpoint and its headers come from OTEL_EXPORTER_OTLP_*.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
        _tracer = provider.get_tracer(TRACER_NAME)
        _enabled = True


def flush() -> None:
    """Export every span ended so far, now (a process exports them at exit by itself)."""
    if _provider is not None:
        _provider.force_flush()


def shutdown() -> None:
    """Flush and stop this process's exporter (tests switch tracing on and off again)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def reset_for_tests(value: bool | None = None) -> None:
    """Forget the decision (the next hook decides again), or force one."""
    global _enabled
    _enabled = value


# --- trace context as text ---------------------------------------------------------------------
def trace_id_of(traceparent: object) -> str | None:
    return traceparent[3:35] if valid_traceparent(traceparent) else None  # type: ignore[index]


def _format(context) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _context_of(traceparent: str | None, tracestate: str | None = None):
    """An OpenTelemetry Context whose (remote) parent is `traceparent`; an empty Context
    (a new trace) when there is none or it is malformed."""
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not valid_traceparent(traceparent):
        return Context()
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    return TraceContextTextMapPropagator().extract(carrier, context=Context())


def _link_to(traceparent: str | None):
    from opentelemetry import trace

    if not valid_traceparent(traceparent):
        return []
    span_context = trace.get_current_span(_context_of(traceparent)).get_span_context()
    return [trace.Link(span_context, {"signalbox.link": "original"})]


def current_traceparent() -> str | None:
    """The traceparent of the span running now in this thread (None when off or none)."""
    if not enabled():
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return _format(span_context) if span_context.is_valid else None


# --- the ids of log records --------------------------------------------------------------------
# What the code running now works on; read by orchestrator.logging_config for every record.
LOG_IDS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "signalbox_log_ids", default=None
)
ID_NAMES = ("run_id", "step_id", "attempt", "event_id", "correlation_id")


def log_ids() -> dict[str, Any]:
    """run, step, attempt, event, correlation and trace ids (None when unknown)."""
    bound = LOG_IDS.get() or {}
    ids = {name: bound.get(name) for name in ID_NAMES}
    trace_id = span_id = None
    if _enabled:
        from opentelemetry import trace

        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            trace_id, span_id = f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"
    if trace_id is None:
        traceparent = bound.get(TRACEPARENT)
        if valid_traceparent(traceparent):
            trace_id, span_id = traceparent[3:35], traceparent[36:52]
    ids["trace_id"], ids["span_id"] = trace_id, span_id
    return ids


# --- scopes: log ids bound, and a span when tracing is on ---------------------------------------
class Scope:
    """Binds ids for the log records written inside it and, when tracing is on, runs a
    span as the current one. `traceparent` is the span's (or, off, the one carried on)."""

    __slots__ = ("_ids", "_span_args", "_token", "_use", "span", "traceparent")

    def __init__(
        self,
        ids: Mapping[str, Any],
        span_args: dict[str, Any] | None = None,
        traceparent: str | None = None,
    ):
        self._ids = ids
        self._span_args = span_args
        self._token = self._use = self.span = None
        self.traceparent = traceparent

    def __enter__(self) -> Scope:
        outer = LOG_IDS.get()
        self._token = LOG_IDS.set({**outer, **self._ids} if outer else self._ids)
        if self._span_args is not None and enabled():
            from opentelemetry import trace

            self.span = _tracer.start_span(**self._span_args)
            self._use = trace.use_span(self.span, end_on_exit=True)
            self._use.__enter__()
            self.traceparent = _format(self.span.get_span_context())
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._use is not None:
                self._use.__exit__(*exc)
        finally:
            LOG_IDS.reset(self._token)

    def set(self, **attributes: Any) -> None:
        if self.span is not None:
            self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def failed(self, description: str) -> None:
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, description[:500]))


def _kind(name: str):
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)


# --- ingest ------------------------------------------------------------------------------------
class Ingest:
    """The span of one ingest request (not current: it may live on an event loop)."""

    __slots__ = ("span", "traceparent")

    def __init__(self, span=None, traceparent: str | None = None):
        self.span, self.traceparent = span, traceparent

    def end(self, *, stored: int = 0, error: str = "") -> None:
        if self.span is None:
            return
        self.span.set_attribute("signalbox.events.stored", stored)
        if error:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, error[:500]))
        self.span.end()


_NO_INGEST = Ingest()


def ingest(
    envelopes: Iterable,
    *,
    header: str | None = None,
    tracestate: str | None = None,
    channel: str,
    kind: str = "SERVER",
    attributes: Mapping[str, Any] | None = None,
) -> Ingest:
    """Start the ingest span of a request's events. An HTTP `traceparent` header is the
    request's context: the parent of the span, and the trace context of each event that
    brings none of its own (even with tracing off: it is passed on as given). With tracing
    on, an event still without one gets the ingest span's, so its trace begins here.

    Every way in calls this: HTTP and webhooks (`header`: the request's), broker
    connections (one call per message, whose CloudEvents `traceparent` extension is the
    parent; kind CONSUMER), schedules (nothing to continue: a new trace; kind INTERNAL).
    `attributes` are added to the span's."""
    envelopes = list(envelopes)
    header = header.strip() if isinstance(header, str) else None
    if not valid_traceparent(header):
        header, tracestate = None, None
    if header:
        for envelope in envelopes:
            if not valid_traceparent(envelope.extensions.get(TRACEPARENT)):
                envelope.extensions[TRACEPARENT] = header
                if tracestate:
                    envelope.extensions.setdefault(TRACESTATE, tracestate)
    if not enabled():
        return _NO_INGEST
    parent = header
    if parent is None and len(envelopes) == 1:
        parent = envelopes[0].extensions.get(TRACEPARENT)
        tracestate = envelopes[0].extensions.get(TRACESTATE)
    first = envelopes[0] if envelopes else None
    span = _tracer.start_span(
        "signalbox.ingest",
        context=_context_of(parent, tracestate if isinstance(tracestate, str) else None),
        kind=_kind(kind),
        attributes={
            "signalbox.channel": channel,
            "signalbox.events": len(envelopes),
            "cloudevents.event_id": first.id if first else "",
            "cloudevents.event_source": first.source if first else "",
            "cloudevents.event_type": first.type if first else "",
            **{k: v for k, v in (attributes or {}).items() if v is not None},
        },
    )
    own = _format(span.get_span_context())
    for envelope in envelopes:
        if not valid_traceparent(envelope.extensions.get(TRACEPARENT)):
            envelope.extensions[TRACEPARENT] = own
    return Ingest(span, own)


# --- bus delivery, runs, attempts -----------------------------------------------------------
def delivery_traces(deliveries: Iterable) -> dict[int, str] | None:
    """{event id: its ingest span's traceparent} from bus entries that carry one."""
    if not enabled():
        return None
    return {d.event_id: d.trace for d in deliveries if getattr(d, "trace", "")}


def delivery(event, ingest_traceparent: str | None = None) -> Scope:
    """Matching one event read from the bus. Its parent: the ingest span named by the bus
    entry when that belongs to the event's trace, else the event's own `traceparent`."""
    carried = (event.extensions or {}).get(TRACEPARENT)
    ids = {
        "event_id": event.pk,
        "correlation_id": event.correlation_id,
        TRACEPARENT: carried,
    }
    if not enabled():
        return Scope(ids, traceparent=carried)
    parent = carried
    if valid_traceparent(ingest_traceparent) and (
        not valid_traceparent(carried) or trace_id_of(carried) == trace_id_of(ingest_traceparent)
    ):
        parent = ingest_traceparent
    return Scope(
        ids,
        {
            "name": "signalbox.deliver",
            "context": _context_of(parent, (event.extensions or {}).get(TRACESTATE)),
            "kind": _kind("CONSUMER"),
            "attributes": {
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "signalbox.event.id": event.pk,
                "cloudevents.event_id": event.ce_id,
                "cloudevents.event_source": event.source,
                "cloudevents.event_type": event.type,
                "signalbox.correlation_id": event.correlation_id or "",
            },
        },
        traceparent=carried,
    )


class RunSpan:
    """The span of a run's start: a child of the current span (the delivery), or a new
    trace linked to another (a replay). Its traceparent is stored on the run, the parent of
    every attempt of it wherever and whenever that runs."""

    __slots__ = ("span", "traceparent")

    def __init__(self, span=None):
        self.span = span
        self.traceparent = _format(span.get_span_context()) if span is not None else ""

    def end(self, run) -> None:
        if self.span is None:
            return
        self.span.set_attributes(
            {
                "signalbox.run.id": run.pk,
                "signalbox.run.origin": run.origin,
                "signalbox.correlation_id": run.correlation_id or "",
            }
        )
        self.span.end()


_NO_RUN = RunSpan()


def run_span(*, workflow: str, origin: str = "trigger", link: str | None = None) -> RunSpan:
    if not enabled():
        return _NO_RUN
    from opentelemetry.context import Context

    span = _tracer.start_span(
        "signalbox.run",
        # A replay is a new trace (an operator's act, not the event's), linked to the old one.
        context=Context() if link is not None else None,
        links=_link_to(link),
        attributes={"signalbox.workflow": workflow, "signalbox.run.origin": origin},
    )
    return RunSpan(span)


def replay_run_span(original, *, origin: str = "replay") -> RunSpan:
    """The start of a replay (or shadow) of `original`: linked to the original's run span,
    or to its event's trace context when the original was started untraced."""
    if not enabled():
        return _NO_RUN
    event = original.event if original.event_id else None
    link = original.traceparent or ((event.extensions or {}).get(TRACEPARENT) if event else "")
    return run_span(workflow=original.workflow.slug, origin=origin, link=link or "")


def step_attempt(run, step, step_run, *, trigger: Mapping[str, Any] | None = None) -> Scope:
    """One attempt of a step. Parent: the run's span, else the triggering event's context."""
    carried = run.traceparent or (trigger or {}).get(TRACEPARENT)
    ids = {
        "run_id": run.pk,
        "step_id": step.id,
        "attempt": step_run.attempt,
        "event_id": run.event_id,
        "correlation_id": run.correlation_id,
        TRACEPARENT: carried,
    }
    if not enabled():
        return Scope(ids, traceparent=carried)
    return Scope(
        ids,
        {
            "name": "signalbox.step",
            "context": _context_of(carried),
            "attributes": {
                "signalbox.run.id": run.pk,
                "signalbox.step.id": step.id,
                "signalbox.step.kind": step.kind,
                "signalbox.step.attempt": step_run.attempt,
                "signalbox.workflow.version": run.version_id,
            },
        },
        traceparent=carried,
    )


def finished(scope: Scope, happening) -> None:
    """Record an attempt's outcome (an engine.StepFinished) on its span."""
    if scope.span is None:
        return
    scope.set(**{"signalbox.step.outcome": "succeeded" if happening.succeeded else "failed"})
    if not happening.succeeded:
        scope.set(**{"signalbox.step.error_code": happening.code or ""})
        scope.failed(happening.error or happening.code or "failed")


# --- what a step sends out ----------------------------------------------------------------------
class Outgoing:
    """An outgoing HTTP call: the headers to send, and its client span when tracing is on."""

    __slots__ = ("_use", "headers", "span")

    def __init__(self, headers: dict[str, str], span=None):
        self.headers, self.span, self._use = headers, span, None

    def __enter__(self) -> Outgoing:
        if self.span is not None:
            from opentelemetry import trace

            self._use = trace.use_span(self.span, end_on_exit=True)
            self._use.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._use is not None:
            self._use.__exit__(*exc)

    def answered(self, status: int) -> None:
        if self.span is not None:
            self.span.set_attribute("http.response.status_code", status)
            if status >= 500:
                from opentelemetry.trace import Status, StatusCode

                self.span.set_status(Status(StatusCode.ERROR, f"answered {status}"))


_NO_HEADERS = Outgoing({})


def outgoing_http(method: str, url: str, *, trigger: Mapping[str, Any] | None = None) -> Outgoing:
    """The trace headers of a step's HTTP call. Off: the triggering event's own context,
    passed on unchanged (if it had one). On: a client span under the attempt's span."""
    if not enabled():
        carried = (trigger or {}).get(TRACEPARENT)
        if not valid_traceparent(carried):
            return _NO_HEADERS
        headers = {TRACEPARENT: carried}
        if isinstance((trigger or {}).get(TRACESTATE), str):
            headers[TRACESTATE] = trigger[TRACESTATE]  # type: ignore[index]
        return Outgoing(headers)
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    span = _tracer.start_span(
        method,
        kind=_kind("CLIENT"),
        attributes={
            "http.request.method": method,
            # No query: it may carry event data; no userinfo.
            "url.scheme": parts.scheme,
            "url.path": parts.path or "/",
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        },
    )
    headers = {TRACEPARENT: _format(span.get_span_context())}
    state = span.get_span_context().trace_state
    if state:
        headers[TRACESTATE] = state.to_header()
    return Outgoing(headers, span)


def emitting(event_type: str) -> Scope:
    """An emit_event step's event: a producer span; the event carries its traceparent (see
    runs.waits, which reads current_traceparent())."""
    return Scope(
        {},
        {
            "name": "signalbox.emit",
            "kind": _kind("PRODUCER"),
            "attributes": {"cloudevents.event_type": event_type},
        }
        if enabled()
        else None,
    )
