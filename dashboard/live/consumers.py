"""The dashboard's WebSockets: runs, one run, the overview, the live event flow, an event's
lineage and the workers page.

How a socket connects, coalesces and is flow-controlled: live_socket.py (PushConsumer). How
hints reach it and how one render is shared by many pages: live_hub.py (the Hub). The run
list sends a page only what changed since its last frame (run_list_frames.py), and a frame
is encoded once and written as the same bytes to every socket (frame_writer.py).

Frames are HTML fragments whose top-level elements carry ids (and hx-swap-oob); the page
swaps each into the element with the same id (static/js/dashboard-live.js).
"""

from __future__ import annotations

import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import connections
from django.template.loader import render_to_string

from dashboard import metrics
from dashboard.live import flow_map
from dashboard.live.hub import Hub, hub, unpacked  # noqa: F401 - imported from here by callers
from dashboard.live.run_list_frames import RunRows, page_rows
from dashboard.live.socket import (  # noqa: F401 - imported from here by callers
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    WINDOW,
    PushConsumer,
)
from workflows.access.roles import has_role
from workflows.catalog.models import TriggerSubscription
from workflows.events.models import Event
from workflows.live import notify
from workflows.queries import dashboard as ds
from workflows.queries import events as store
from workflows.queries.runs import SHADOW
from workflows.runs.models import Run


# --- runs ---------------------------------------------------------------------------------------
class RunListConsumer(PushConsumer):
    """/ws/runs/?workflow=&status=&after=&before=&correlation_id=&q=&before_id="""

    # At most 4 frames a second: rows changing faster are read by no one, and each frame
    # costs the process a share of a render and a write per page (200 pages of all runs at
    # 20 runs/s took ~2,900 frames/s, the web tier's largest cost in the soak). A page that
    # had no frame for this long is still served at once.
    interval = 0.25

    def authorize(self, user):
        self.query, _errors = ds.parse_run_query(self.params)
        if self.query.workflow and self.query.workflow in self.hidden_names:
            return CLOSE_NOT_FOUND
        self.shown: RunRows | None = None  # the render this page shows
        return None

    def concerns(self, message):
        slug = message.get("workflow_slug")
        if slug in self.hidden_names:
            return False
        return not self.query.workflow or slug == self.query.workflow

    def share(self):
        query, hidden = self.query, self.hidden
        return ("runs", query.cache_key(), hidden), lambda: render_run_rows(query, hidden)

    async def render(self, *, snapshot, fresh_after):
        if snapshot:
            self.shown = None  # the whole page
        return await super().render(snapshot=snapshot, fresh_after=fresh_after)

    def frame_of(self, result: RunRows) -> str | None:
        # Only what changed since the render this page shows (run_list_frames.py).
        shown, self.shown = self.shown, result
        return result.since(shown)

    def frame_lost(self) -> None:
        super().frame_lost()
        self.shown = None


def render_run_rows(query: ds.RunQuery, hidden: frozenset[int]) -> RunRows:
    runs, notes = ds.runs_queryset(query, hidden=hidden)
    rows, more, last_id = page_rows(runs, query.limit)
    # What ds.run_page gives the pager, without building the runs (page_rows).
    page = ds.RunPage(runs=[], more=more, notes=notes)
    page.newest_query = query.querystring()
    page.older_query = query.querystring(before_id=last_id) if more else ""
    context = {"page": page, "query": query, "oob": True}
    return RunRows(
        rows_html=render_to_string(
            "dashboard/_run_rows.html", {**context, "runs": rows, "prerendered": True}
        ),
        pager_html=render_to_string("dashboard/_run_pager.html", context),
        limit=query.limit,
    )


class RunDetailConsumer(PushConsumer):
    """/ws/runs/<id>/: the run, its steps, graph, timeline, journal and links."""

    def authorize(self, user):
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        self.related: frozenset[int] = frozenset({self.run_id})
        run = Run.objects.select_related("workflow").filter(pk=self.run_id).first()
        if run is None or run.workflow_id in self.hidden:
            return CLOSE_NOT_FOUND
        return None

    def extra_groups(self):
        return [notify.run_group(self.run_id)]

    def concerns(self, message):
        return message.get("run") in self.related

    def share(self):
        run_id = self.run_id
        return ("run", run_id), lambda: render_run_detail(run_id)

    def frame_of(self, result):
        frame, related = result
        # Child and replay runs change this page too.
        self.related = related
        return frame


def render_run_detail(run_id: int) -> tuple[str, frozenset[int]]:
    view = ds.run_view(run_id)
    if view is None:
        return (
            '<section id="run-detail" hx-swap-oob="outerHTML" data-status="gone">'
            "This run no longer exists.</section>",
            frozenset({run_id}),
        )
    related = {run_id, *(r.pk for r in view.children), *(r.pk for r in view.replays)}
    if view.parent:
        related.add(view.parent.pk)
    return render_to_string(
        "dashboard/_run_detail.html", run_detail_context(view, oob=True)
    ), frozenset(related)


def run_detail_context(view: ds.RunView, *, oob: bool = False) -> dict[str, Any]:
    return {"run": view.run, "steps": view.steps, "view": view, "oob": oob}


# --- overview ---------------------------------------------------------------------------------
class OverviewConsumer(PushConsumer):
    """/ws/overview/?window=15m: figures and chart data, on hints (at most once a second)
    and every few seconds for the gauges that change without hints."""

    hint_types = ("run.changed", "event.ingested")
    interval = 1.0
    refresh_seconds = 5.0

    def authorize(self, user):
        self.window = (
            self.params.get("window")
            if self.params.get("window") in metrics.WINDOWS
            else metrics.DEFAULT_WINDOW
        )
        self.can_switch_demo = has_role(user, "operator")
        return None

    def share(self):
        window, hidden, operator = self.window, self.hidden, self.can_switch_demo
        return (
            ("overview", window, hidden, operator),
            lambda: render_overview(window, hidden, operator),
        )


def render_overview(window: str, hidden: frozenset[int], operator: bool) -> str:
    data = metrics.overview(window, hidden=hidden)
    return render_to_string(
        "dashboard/_overview_figures.html", overview_context(data, operator, oob=True)
    )


def overview_context(
    data: metrics.Overview, operator: bool, *, oob: bool = False
) -> dict[str, Any]:
    return {
        "data": data,
        "figures": data.figures,
        "chart_data": data.as_dict(),
        "can_switch_demo": operator,
        "windows": list(metrics.WINDOWS),
        "oob": oob,
    }


# --- the live event flow -------------------------------------------------------------------------
FLOW_INTERVAL = 0.25
FLOW_CAP = 40  # rows per frame: at most FLOW_CAP / FLOW_INTERVAL rows per second reach a page
FLOW_SNAPSHOT = 25
FLOW_COUNT_LIMIT = 100_000
FLOW_AWAIT_RUNS_SECONDS = 60.0
FLOW_AWAIT_RUNS_MAX = 200


class FlowConsumer(PushConsumer):
    """/ws/flow/?type=&source=&q=&channel=&workflow=&after=<event id>: new events, newest
    first, at most FLOW_CAP per frame; more than that is folded (counted and said). `after`
    resumes from the last event the page has. `channel` and `workflow` are the flow map's
    edges: events that came in on a channel; events that started a run of a workflow, or
    of a type it listens to and not matched yet (its run starts after the row is shown)."""

    hint_types = ("event.ingested", "run.changed")
    interval = FLOW_INTERVAL

    def authorize(self, user):
        self.filter_type = self.params.get("type", "").strip()
        self.filter_source = self.params.get("source", "").strip()
        self.filter_text = self.params.get("q", "").strip()
        self.filter_channel = self.params.get("channel", "").strip()
        self.filter_workflow = self.params.get("workflow", "").strip()
        after = self.params.get("after", "")
        self.last_id = int(after) if after.isdigit() else None
        self.paused = False
        self.folded_total = 0
        self.pending_hints = 0
        self.awaiting: dict[int, float] = {}  # event id -> until when we look for its runs
        self.runs_dirty = False
        return None

    def concerns(self, message):
        if message.get("type") == "run.changed":
            # While a render is on its way, the event it shows may be one this run belongs
            # to (its rows are not in `awaiting` yet): look again after it.
            if (self.awaiting or self.scheduled) and not self.paused:
                self.runs_dirty = True
                return True
            return False
        if self.filter_type and message.get("event_type") != self.filter_type:
            return False
        if self.filter_source and message.get("source") != self.filter_source:
            return False
        if self.filter_channel and message.get("channel") != self.filter_channel:
            return False
        # An event of a workflow this user may not see is neither shown nor counted.
        if message.get("workflow") in self.hidden_names:
            return False
        self.pending_hints += 1
        return not self.paused

    async def command(self, message):
        if "pause" in message:
            self.paused = bool(message["pause"])
            # Paused: say so (events keep being counted); resumed: catch up at once.
            self.resync()

    async def render(self, *, snapshot, fresh_after):
        return await database_sync_to_async(self.render_sync)(snapshot)

    def events(self):
        qs = Event.objects.all()
        if self.filter_type:
            qs = qs.filter(type=self.filter_type)
        if self.filter_source:
            qs = qs.filter(source=self.filter_source)
        if self.filter_channel:
            qs = qs.filter(channel=self.filter_channel)
        if self.filter_workflow:
            qs = store.events_of_workflow(qs, slug=self.filter_workflow, hidden=self.hidden)
        if self.filter_text:
            from django.db.models import Q, TextField
            from django.db.models.functions import Cast

            qs = qs.annotate(data_text=Cast("data", TextField())).filter(
                Q(data_text__icontains=self.filter_text) | Q(subject__icontains=self.filter_text)
            )
        return store.visible_events(qs, hidden=self.hidden)

    def render_sync(self, snapshot: bool) -> str:
        now = time.monotonic()
        parts = []
        if self.paused:
            return flow_status_html(self, paused=True)
        # Taken before reading: a run hint that comes during this render asks for another.
        runs_dirty, self.runs_dirty = self.runs_dirty, False
        # A first visit replaces the rows; a reconnect (after=) adds what it missed.
        replace = self.last_id is None
        top = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
        if self.last_id is None:  # a first visit: the latest few, nothing folded
            rows = list(self.events().filter(id__lte=top).order_by("-id")[:FLOW_SNAPSHOT])
            folded = 0
        else:
            window = self.events().filter(id__gt=self.last_id, id__lte=top)
            rows = list(window.order_by("-id")[:FLOW_CAP])
            folded = 0
            if len(rows) == FLOW_CAP:
                folded = max(0, window[:FLOW_COUNT_LIMIT].count() - FLOW_CAP)
        self.folded_total += folded
        self.pending_hints = 0
        self.last_id = max(self.last_id or 0, top)
        updates = ""
        if runs_dirty or rows:
            updates = self.flow_run_cells(now)
        if rows:
            for event in rows:
                if len(self.awaiting) < FLOW_AWAIT_RUNS_MAX:
                    self.awaiting[event.pk] = now + FLOW_AWAIT_RUNS_SECONDS
            parts.append(render_flow_rows(rows, folded=folded, replace=replace, hidden=self.hidden))
        elif replace:
            parts.append(render_flow_rows([], folded=0, replace=True, hidden=self.hidden))
        parts.append(updates)
        parts.append(flow_status_html(self, paused=False, folded=folded))
        return "".join(parts)

    def flow_run_cells(self, now: float) -> str:
        """Refresh the "runs" cell of recent events whose runs may have started since."""
        self.awaiting = {k: until for k, until in self.awaiting.items() if until > now}
        if not self.awaiting:
            return ""
        started: dict[int, list[Run]] = {}
        for run in (
            Run.objects.select_related("workflow")
            .filter(event_id__in=list(self.awaiting))
            .exclude(origin=SHADOW)
            .exclude(workflow_id__in=sorted(self.hidden))
            .order_by("id")
        ):
            started.setdefault(run.event_id, []).append(run)
        return "".join(
            render_to_string(
                "dashboard/_flow_runs_cell.html", {"event_id": event_id, "runs": runs, "oob": True}
            )
            for event_id, runs in started.items()
        )


def render_flow_rows(
    rows: list[Event], *, folded: int, replace: bool, hidden: frozenset[int]
) -> str:
    ids = [e.pk for e in rows]
    started: dict[int, list[Run]] = {}
    for run in (
        Run.objects.select_related("workflow")
        .filter(event_id__in=ids)
        .exclude(origin=SHADOW)  # a draft tried on the event; the event started no such run
        .exclude(workflow_id__in=sorted(hidden))
    ):
        started.setdefault(run.event_id, []).append(run)
    types = {e.type for e in rows}
    subscribed: dict[str, list[str]] = {}
    for event_type, slug in (
        TriggerSubscription.objects.filter(event_type__in=types)
        .exclude(workflow_id__in=sorted(hidden))
        .values_list("event_type", "workflow__slug")
    ):
        subscribed.setdefault(event_type, []).append(slug)
    items = [
        {"event": e, "runs": started.get(e.pk, []), "subscribed": subscribed.get(e.type, [])}
        for e in rows
    ]
    return render_to_string(
        "dashboard/_flow_rows.html",
        {"items": items, "folded": folded, "replace": replace, "oob": True},
    )


def flow_status_html(consumer: FlowConsumer, *, paused: bool, folded: int = 0) -> str:
    return render_to_string(
        "dashboard/_flow_status.html",
        {
            "paused": paused,
            "folded": folded,
            "folded_total": consumer.folded_total,
            "waiting": consumer.pending_hints,
            "last_id": consumer.last_id or 0,
            "oob": True,
        },
    )


# --- the flow map --------------------------------------------------------------------------------
# The map is pushed like every live page, over its own socket so that one render serves every
# page of the same visibility (the event rows are rendered per page, by their filters). It is
# read from Redis counters (workflows/infra/flow_counters.py), so a render costs one pipelined read
# of a few hashes, never a scan of events or runs; at most one render per FLOW_MAP_INTERVAL
# while events arrive, and one every FLOW_MAP_REFRESH without them, so that the rates fall
# as the window slides past the last traffic.
FLOW_MAP_INTERVAL = 2.0
FLOW_MAP_REFRESH = 10.0


class FlowMapConsumer(PushConsumer):
    """/ws/flow-map/: sources → event types → workflows, with the last minutes' traffic."""

    hint_types = ("event.ingested", "run.changed")
    interval = FLOW_MAP_INTERVAL
    refresh_seconds = FLOW_MAP_REFRESH

    def share(self):
        hidden_names = self.hidden_names
        return ("flow-map", self.hidden), lambda: render_flow_map(hidden_names)


def render_flow_map(hidden_slugs: frozenset[str]) -> str:
    return render_to_string(
        "dashboard/_flow_map.html",
        {"map": flow_map.flow_map(hidden_slugs=hidden_slugs), "oob": True},
    )


# --- lineage -----------------------------------------------------------------------------------
class LineageConsumer(PushConsumer):
    """/ws/lineage/<event id>/: the causation graph, redrawn when a run in it changes, a
    new run starts, or an event of the same conversation arrives."""

    hint_types = ("run.changed", "event.ingested")
    interval = 0.5

    def authorize(self, user):
        self.event_id = int(self.scope["url_route"]["kwargs"]["event_id"])
        event = Event.objects.filter(pk=self.event_id).only("correlation_id").first()
        if event is None or store.is_hidden(event, hidden=self.hidden):
            return CLOSE_NOT_FOUND  # as the lineage page answers 404
        self.correlation = event.correlation_id if event else None
        self.run_ids: frozenset[int] = frozenset()
        self.max_run_id = 0
        return None

    def concerns(self, message):
        if message.get("type") == "event.ingested":
            return bool(self.correlation) and message.get("correlation") == self.correlation
        run = message.get("run") or 0
        return run in self.run_ids or run > self.max_run_id

    def share(self):
        event_id, hidden = self.event_id, self.hidden
        return ("lineage", event_id, hidden), lambda: render_lineage(event_id, hidden)

    def frame_of(self, result):
        frame, self.run_ids, self.max_run_id = result
        return frame


def render_lineage(event_id: int, hidden: frozenset[int]) -> tuple[str, frozenset[int], int]:
    graph = ds.lineage(event_id, hidden=hidden)
    html = render_to_string(
        "dashboard/lineage_graph.html", {"lineage": graph, "event_id": event_id, "oob": True}
    )
    if graph is None:
        return html, frozenset(), 0
    return html, graph.run_ids, graph.max_run_id


# --- workers and queues ------------------------------------------------------------------------
class SystemConsumer(PushConsumer):
    """/ws/system/: workers, queues, bus partitions and circuit breakers, every few seconds
    (none of them sends hints)."""

    hint_types = ()
    refresh_seconds = 3.0

    async def render(self, *, snapshot, fresh_after):
        from dashboard import system_views

        # Not the database thread: asking the workers blocks for up to a second.
        return await sync_to_async(_render_system, thread_sensitive=False)(system_views)


def _render_system(system_views) -> str:
    try:
        return render_to_string(
            "dashboard/_system_panels.html", {**system_views.system_context(), "oob": True}
        )
    finally:
        connections.close_all()  # this pool thread's own connection
