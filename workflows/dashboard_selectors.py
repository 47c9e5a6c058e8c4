"""Read queries behind the live dashboard: who sees which workflow, the filtered run list
(keyset-paginated, index-backed at a million runs), a run's graph, timeline and links, and
an event's lineage.

Time filters on runs and steps go through `first_id_at_or_after`: ids and `created_at`
grow together, so a time bound becomes an id bound found by binary search over the primary
key (about twenty one-row index lookups at a million rows) instead of needing an index on
`created_at`; the exact time condition is applied as well, inside that id range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import Max, Min, Model, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from .event_selectors import _parse_time, visible_events
from .models import Event, Run, RunJournal, StepRun, Workflow
from .roles import has_role
from .selectors import SHADOW, TRY
from .services.definitions import definition_for
from .services.producers import RUN_EXTENSION, RUN_SOURCE
from .services.secrets import mask, secret_values
from .states import RunStatus

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Clocks of concurrent inserts disagree by far less than this; the id bound is widened by
# it and the exact time condition does the rest.
CLOCK_SLACK = timedelta(seconds=60)
# Text search reads the data of this many of the newest (or in-range) events: without a
# trigram index a search through every event would read the whole table.
TEXT_SEARCH_EVENTS = 100_000
# At most this many matching events feed the run filter (newest first).
MATCHED_EVENTS = 1_000
RUN_EVENT_STATUSES = ("started", "succeeded", "failed", "cancelled")


# --- who sees what -------------------------------------------------------------------------
def sees_every_workflow(user) -> bool:
    return bool(getattr(user, "is_superuser", False)) or has_role(user, "admin")


def _restricted_to_others(teams) -> frozenset[int]:
    """Workflows restricted to a team not among `teams` (group ids or a group queryset)."""
    restricted = Workflow.objects.exclude(team=None)
    if teams is not None:
        restricted = restricted.exclude(team__in=teams)
    return frozenset(restricted.values_list("id", flat=True))


def hidden_workflow_ids(user) -> frozenset[int]:
    """Workflows restricted to a team the user is not in (admins see everything)."""
    if sees_every_workflow(user):
        return frozenset()
    return _restricted_to_others(
        user.groups.all() if getattr(user, "is_authenticated", False) else None
    )


def hidden_for_team(team_id: int | None) -> frozenset[int]:
    """What an API token of team `team_id` may not see: workflows restricted to another
    team, the rule a team member meets in the dashboard. A token of no team sees every
    workflow (tokens predate teams; an installation without teams must not change)."""
    if team_id is None:
        return frozenset()
    return _restricted_to_others([team_id])


def can_see_workflow(user, workflow: Workflow | None) -> bool:
    if workflow is None or workflow.team_id is None or sees_every_workflow(user):
        return True
    return user.groups.filter(pk=workflow.team_id).exists()


# The run list's workflow picker lists at most this many; with more, it is a text field
# (a page must not grow with the number of workflows: 10,000 <option>s are read on every
# page load and no one scrolls through them).
WORKFLOW_CHOICES = 200


def workflow_choices(hidden: frozenset[int] = frozenset()) -> list[str] | None:
    """The slugs of the workflows one may pick in the run list, or None when there are more
    than WORKFLOW_CHOICES (one bounded query of slugs, never whole workflows)."""
    workflows = Workflow.objects.order_by("slug")
    if hidden:
        workflows = workflows.exclude(id__in=sorted(hidden))
    slugs = list(workflows.values_list("slug", flat=True)[: WORKFLOW_CHOICES + 1])
    return None if len(slugs) > WORKFLOW_CHOICES else slugs


def hidden_slugs(hidden: frozenset[int]) -> frozenset[str]:
    if not hidden:
        return frozenset()
    return frozenset(Workflow.objects.filter(id__in=hidden).values_list("slug", flat=True))


# --- time as an id bound ---------------------------------------------------------------------
def first_id_at_or_after(model: type[Model], field_name: str, when: datetime) -> int | None:
    """The smallest id whose row's `field_name` is at or after `when`, assuming the field
    grows with the id (an insertion time). None for an empty table; max id + 1 when every
    row is older. Each probe is one primary-key index lookup."""
    bounds = model.objects.aggregate(lo=Min("id"), hi=Max("id"))
    if bounds["lo"] is None:
        return None
    lo, hi = bounds["lo"], bounds["hi"] + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = model.objects.filter(id__gte=mid).order_by("id").values_list("id", field_name)[:1]
        found = list(row)
        if not found or found[0][1] >= when:
            hi = mid
        else:
            lo = found[0][0] + 1
    return lo


# --- the run list ----------------------------------------------------------------------------
RUN_FILTERS = ("workflow", "status", "after", "before", "correlation_id", "q", "tries")


@dataclass(frozen=True)
class RunQuery:
    workflow: str = ""
    status: str = ""
    after: datetime | None = None
    before: datetime | None = None
    correlation_id: str = ""
    q: str = ""
    tries: bool = False  # show the editor's tries of the draft too
    before_id: int | None = None
    limit: int = PAGE_SIZE

    def filters(self) -> dict[str, str]:
        params = {}
        for name in RUN_FILTERS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat().replace("+00:00", "Z")
            elif value is True:
                value = "1"
            if value:
                params[name] = value
        return params

    @property
    def filtered(self) -> bool:
        return bool(self.filters())

    def querystring(self, **extra: Any) -> str:
        params = {**self.filters(), **{k: v for k, v in extra.items() if v not in (None, "")}}
        if self.limit != PAGE_SIZE:
            params["limit"] = self.limit
        return urlencode(params)

    def cache_key(self) -> tuple:
        return (*(self.filters().get(name, "") for name in RUN_FILTERS), self.before_id, self.limit)


def parse_run_query(params: Mapping[str, Any]) -> tuple[RunQuery, dict[str, str]]:
    """A RunQuery from request.GET or a socket's query string, and the errors per field
    (a bad field is left out rather than failing the whole page)."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}

    def get(name: str) -> str:
        raw = params.get(name, "")
        if isinstance(raw, list):
            raw = raw[0] if raw else ""
        return str(raw).strip()

    for name in ("workflow", "correlation_id", "q"):
        if get(name):
            values[name] = get(name)[:255]
    if get("tries") in ("1", "on", "true"):
        values["tries"] = True
    if get("status"):
        if get("status") in set(RunStatus):
            values["status"] = get("status")
        else:
            errors["status"] = "one of " + ", ".join(RunStatus)
    for name in ("after", "before"):
        if get(name):
            try:
                values[name] = _parse_time(get(name))
            except ValueError:
                errors[name] = "an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
    for name, top in (("before_id", None), ("limit", MAX_PAGE_SIZE)):
        text = get(name)
        if text:
            if text.isdigit() and int(text) >= 1 and (top is None or int(text) <= top):
                values[name] = int(text)
            else:
                errors[name] = "a positive integer" + (f" up to {top}" if top else "")
    if values.get("after") and values.get("before") and values["after"] >= values["before"]:
        errors["after"] = "must be earlier than before"
        values.pop("after")
    return RunQuery(**values), errors


@dataclass
class RunPage:
    runs: list[Run]
    more: bool
    notes: list[str] = field(default_factory=list)
    newest_query: str = ""
    older_query: str = ""

    @property
    def next_before_id(self) -> int | None:
        return self.runs[-1].pk if self.more and self.runs else None


def matching_event_ids(
    *,
    text: str = "",
    correlation_id: str = "",
    after: datetime | None = None,
    before: datetime | None = None,
) -> tuple[list[int], list[str]]:
    """Ids of events (newest first, at most MATCHED_EVENTS) for the run filters that look at
    the triggering event, and notes on how far the search went."""
    notes: list[str] = []
    events = Event.objects.order_by("-id")
    if correlation_id:
        events = events.filter(correlation_id=correlation_id)  # event_correlation_recent
    if text:
        newest = Event.objects.aggregate(top=Max("id"))["top"] or 0
        upper = newest + 1
        if before is not None:
            bound = first_event_id_at_or_after(before)
            upper = bound if bound is not None else upper
        lower = max(0, upper - TEXT_SEARCH_EVENTS)
        if after is not None:
            bound = first_event_id_at_or_after(after - CLOCK_SLACK)
            lower = max(lower, bound or 0)
        floor = Event.objects.filter(id__lt=upper).aggregate(bottom=Min("id"))["bottom"]
        if floor is not None and floor < lower:
            notes.append(
                f"Text search looked at the newest {TEXT_SEARCH_EVENTS:,} events of the time "
                "range; narrow the time range to search further back."
            )
        events = (
            events.filter(id__gte=lower, id__lt=upper)
            .annotate(data_text=Cast("data", TextField()))
            .filter(Q(data_text__icontains=text) | Q(subject__icontains=text))
        )
    ids = list(events.values_list("id", flat=True)[: MATCHED_EVENTS + 1])
    if len(ids) > MATCHED_EVENTS:
        notes.append(f"Showing runs of the newest {MATCHED_EVENTS:,} matching events.")
    return ids[:MATCHED_EVENTS], notes


def first_event_id_at_or_after(when: datetime) -> int | None:
    """Events have an index on received_at: one lookup, no search."""
    row = Event.objects.filter(received_at__gte=when).order_by("received_at").values("id")[:1]
    found = list(row)
    if found:
        return found[0]["id"]
    return (Event.objects.aggregate(top=Max("id"))["top"] or 0) + 1


def runs_queryset(query: RunQuery, *, hidden: frozenset[int] = frozenset()):
    """The filtered runs, newest first, before any page limit; plus notes."""
    notes: list[str] = []
    # Shadow runs are findings of their batch (its page lists them), not the workflow's work;
    # tries of the draft are the editor's, shown here only when asked for.
    unlisted = [SHADOW] if query.tries else [SHADOW, TRY]
    qs = Run.objects.select_related("workflow", "version").exclude(origin__in=unlisted)
    qs = qs.order_by("-id")
    if hidden:
        qs = qs.exclude(workflow_id__in=sorted(hidden))
    if query.workflow:
        workflow_id = Workflow.objects.filter(slug=query.workflow).values_list("id", flat=True)
        found = list(workflow_id)
        qs = qs.filter(workflow_id=found[0] if found else -1)
    if query.status:
        qs = qs.filter(status=query.status)
    if query.after is not None:
        lower = first_id_at_or_after(Run, "created_at", query.after - CLOCK_SLACK)
        if lower is not None:
            qs = qs.filter(id__gte=lower)
        qs = qs.filter(created_at__gte=query.after)
    if query.before is not None:
        upper = first_id_at_or_after(Run, "created_at", query.before + CLOCK_SLACK)
        if upper is not None:
            qs = qs.filter(id__lt=upper)
        qs = qs.filter(created_at__lt=query.before)
    if query.correlation_id or query.q:
        # Through the event index (every run carries its trigger event's correlation id),
        # then Run.event_id's index: no index on Run.correlation_id is needed.
        event_ids, event_notes = matching_event_ids(
            text=query.q,
            correlation_id=query.correlation_id,
            after=query.after,
            before=query.before,
        )
        notes += event_notes
        qs = qs.filter(event_id__in=event_ids)
    if query.before_id is not None:
        qs = qs.filter(id__lt=query.before_id)
    return qs, notes


def run_page(query: RunQuery, *, hidden: frozenset[int] = frozenset()) -> RunPage:
    qs, notes = runs_queryset(query, hidden=hidden)
    rows = list(qs[: query.limit + 1])
    page = RunPage(runs=rows[: query.limit], more=len(rows) > query.limit, notes=notes)
    page.newest_query = query.querystring()
    page.older_query = query.querystring(before_id=page.next_before_id) if page.more else ""
    return page


# --- one run ---------------------------------------------------------------------------------
STATE_COLOURS = {
    "succeeded": "#1f8a4c",
    "failed": "#c4322b",
    "running": "#b7791f",
    "waiting": "#3056d3",
    "queued": "#6b7385",
    "skipped": "#a3aab8",
    "pending": "#c9ced8",
}


@dataclass
class GraphNode:
    id: str
    kind: str
    state: str
    x: float
    y: float
    attempts: int = 0

    @property
    def colour(self) -> str:
        return STATE_COLOURS.get(self.state, STATE_COLOURS["pending"])


@dataclass
class GraphEdge:
    source: str
    target: str
    port: str
    path: str
    label_x: float
    label_y: float
    taken: bool = False


@dataclass
class Graph:
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    width: float
    height: float


NODE_W, NODE_H, GAP_X, GAP_Y = 150.0, 44.0, 60.0, 22.0


def _layers(ids: list[str], incoming: dict[str, list[str]]) -> dict[str, int]:
    """Longest-path layering of a DAG (definitions are checked to have no cycle)."""
    layer: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str] = frozenset()) -> int:
        if node in layer:
            return layer[node]
        if node in seen:  # defensive: a cycle would have been refused at publish
            return 0
        parents = incoming.get(node, [])
        layer[node] = 0 if not parents else 1 + max(depth(p, seen | {node}) for p in parents)
        return layer[node]

    for node in ids:
        depth(node)
    return layer


def layered_positions(
    ids: list[str], edges: list[tuple[str, str]], *, node_w: float = NODE_W, node_h: float = NODE_H
) -> tuple[dict[str, tuple[float, float]], float, float]:
    """(x, y) of each node's top-left corner, left to right by layer; and the size."""
    incoming: dict[str, list[str]] = {}
    for source, target in edges:
        incoming.setdefault(target, []).append(source)
    layer = _layers(ids, incoming)
    columns: dict[int, list[str]] = {}
    for node in ids:
        columns.setdefault(layer[node], []).append(node)
    tallest = max((len(c) for c in columns.values()), default=1)
    height = tallest * (node_h + GAP_Y) + GAP_Y
    positions = {}
    for col, members in columns.items():
        offset = (height - len(members) * (node_h + GAP_Y) + GAP_Y) / 2
        for row, node in enumerate(members):
            positions[node] = (GAP_X / 2 + col * (node_w + GAP_X), offset + row * (node_h + GAP_Y))
    width = GAP_X + (max(columns, default=0) + 1) * (node_w + GAP_X) - GAP_X
    return positions, width, height


def curve(x1: float, y1: float, x2: float, y2: float) -> str:
    bend = max(30.0, (x2 - x1) / 2)
    return (
        f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    )


def workflow_graph(run: Run, latest: Mapping[str, StepRun], counts: Mapping[str, int]) -> Graph:
    definition = definition_for(run.version)
    ids = list(definition.steps)
    pairs = [(e.source, e.target) for e in definition.edges]
    positions, width, height = layered_positions(ids, pairs)
    nodes = []
    for step_id in ids:
        step = definition.steps[step_id]
        attempt = latest.get(step_id)
        x, y = positions[step_id]
        nodes.append(
            GraphNode(
                step_id,
                step.kind,
                attempt.status if attempt else "pending",
                x,
                y,
                counts.get(step_id, 0),
            )
        )
    edges = []
    for edge in definition.edges:
        sx, sy = positions[edge.source]
        tx, ty = positions[edge.target]
        x1, y1, x2, y2 = sx + NODE_W, sy + NODE_H / 2, tx, ty + NODE_H / 2
        source = latest.get(edge.source)
        taken = bool(
            source
            and source.status in ("succeeded", "failed")
            and (source.port == edge.port or (edge.port == "failure" and source.status == "failed"))
        )
        edges.append(
            GraphEdge(
                edge.source,
                edge.target,
                edge.port,
                curve(x1, y1, x2, y2),
                (x1 + x2) / 2,
                (y1 + y2) / 2 - 4,
                taken,
            )
        )
    return Graph(nodes, edges, width, height)


@dataclass
class Segment:
    kind: str  # queued | backoff | running | waiting
    start: datetime
    end: datetime
    left: float = 0.0  # percent of the timeline
    width: float = 0.0

    @property
    def ms(self) -> int:
        return int((self.end - self.start).total_seconds() * 1000)


@dataclass
class TimelineRow:
    attempt: StepRun
    segments: list[Segment]


@dataclass
class Timeline:
    start: datetime
    end: datetime
    rows: list[TimelineRow]

    @property
    def total_ms(self) -> int:
        return int((self.end - self.start).total_seconds() * 1000)

    @property
    def ticks(self) -> list[tuple[float, str]]:
        total = (self.end - self.start).total_seconds()
        if total <= 0:
            return []
        step = _nice_step(total / 5)
        out, t = [], 0.0
        while t <= total + 1e-9:
            out.append((100 * t / total, _duration_label(t)))
            t += step
        return out


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _duration_label(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min"


def timeline(run: Run, attempts: list[StepRun], now: datetime) -> Timeline:
    """Each attempt's life: waiting in the queue (or for its back-off), running, parked."""
    start = run.created_at
    rows = []
    for attempt in attempts:
        segments = []
        ready = (
            attempt.not_before
            if attempt.not_before and attempt.not_before > attempt.created_at
            else None
        )
        began = attempt.started_at
        if ready:
            segments.append(Segment("backoff", attempt.created_at, min(ready, began or now)))
        queued_from = ready or attempt.created_at
        if began is None and attempt.status == "queued":
            if queued_from < now:
                segments.append(Segment("queued", queued_from, now))
        elif began is not None:
            if queued_from < began:
                segments.append(Segment("queued", queued_from, began))
            end = attempt.finished_at or now
            kind = "waiting" if attempt.status == "waiting" else "running"
            segments.append(Segment(kind, began, max(began, end)))
        rows.append(TimelineRow(attempt, segments))
    end = max(
        [start, now if run.finished_at is None else run.finished_at]
        + [s.end for row in rows for s in row.segments]
    )
    total = max((end - start).total_seconds(), 1e-3)
    for row in rows:
        for segment in row.segments:
            segment.left = 100 * (segment.start - start).total_seconds() / total
            segment.width = max(0.4, 100 * (segment.end - segment.start).total_seconds() / total)
    return Timeline(start, end, rows)


@dataclass
class StepDetail:
    step_id: str
    kind: str
    latest: StepRun
    attempts: list[StepRun]


@dataclass
class RunView:
    run: Run
    steps: list[StepRun]  # latest attempt of each step
    step_details: list[StepDetail]
    graph: Graph
    timeline: Timeline
    journal: list[RunJournal]
    emitted: list[Event]
    parent: Run | None
    children: list[Run]
    replays: list[Run]


def emitted_events(run_ids: list[int]) -> dict[int, list[Event]]:
    """Events the runs emitted: their run events (looked up by the unique (source, id)) and
    what their emit_event steps published (by the ids their outputs recorded)."""
    if not run_ids:
        return {}
    by_run: dict[int, list[Event]] = {r: [] for r in run_ids}
    names = {f"run-{r}-{s}": r for r in run_ids for s in RUN_EVENT_STATUSES}
    for event in Event.objects.filter(source=RUN_SOURCE, ce_id__in=list(names)):
        by_run[names[event.ce_id]].append(event)
    emitted_ids: dict[int, int] = {}
    for run_id, output in StepRun.objects.filter(
        run_id__in=run_ids, kind="emit_event", status="succeeded"
    ).values_list("run_id", "output"):
        if isinstance(output, dict) and isinstance(output.get("id"), int):
            emitted_ids[output["id"]] = run_id
    for event in Event.objects.filter(id__in=list(emitted_ids)):
        by_run[emitted_ids[event.pk]].append(event)
    for events in by_run.values():
        events.sort(key=lambda e: e.pk)
    return by_run


def _masked(value: Any, secrets: dict[str, str]) -> Any:
    return mask(value, secrets) if secrets else value


def run_view(run_id: int, *, now: datetime | None = None) -> RunView | None:
    run = (
        Run.objects.select_related("workflow", "version", "event", "parent_step", "replay_of")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        return None
    now = now or timezone.now()
    secrets = secret_values()
    attempts = list(run.steps.order_by("id"))
    for attempt in attempts:
        # Masked when recorded; masked again here, for secrets added since.
        attempt.input = _masked(attempt.input, secrets)
        attempt.output = _masked(attempt.output, secrets)
        attempt.error = _masked(attempt.error, secrets)
    if secrets:
        run.error = _masked(run.error, secrets)
    by_step: dict[str, list[StepRun]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.step_id, []).append(attempt)
    latest = {step_id: rows[-1] for step_id, rows in by_step.items()}
    steps = sorted(latest.values(), key=lambda s: s.id)
    journal = list(RunJournal.objects.filter(run=run).order_by("seq"))
    for entry in journal:
        entry.data = _masked(entry.data, secrets)
    return RunView(
        run=run,
        steps=steps,
        step_details=[StepDetail(s.step_id, s.kind, s, by_step[s.step_id]) for s in steps],
        graph=workflow_graph(run, latest, {k: len(v) for k, v in by_step.items()}),
        timeline=timeline(run, attempts, now),
        journal=journal,
        emitted=emitted_events([run.pk])[run.pk],
        parent=Run.objects.select_related("workflow").filter(pk=run.parent_step.run_id).first()
        if run.parent_step_id
        else None,
        children=list(
            Run.objects.select_related("workflow").filter(parent_step__run_id=run.pk).order_by("id")
        ),
        replays=list(
            Run.objects.select_related("workflow")
            .filter(replay_of=run)
            .exclude(origin=SHADOW)
            .order_by("id")
        ),
    )


# --- lineage -----------------------------------------------------------------------------------
@dataclass
class LineageNode:
    key: str  # "event-12" | "run-7"
    kind: str  # event | run
    pk: int
    label: str
    sublabel: str
    state: str
    depth: int
    x: float = 0.0
    y: float = 0.0

    @property
    def colour(self) -> str:
        if self.kind == "event":
            return "#3056d3"
        return STATE_COLOURS.get(self.state, STATE_COLOURS["pending"])


@dataclass
class Lineage:
    focus: int  # the event asked about; the graph starts at its chain's first event
    nodes: list[LineageNode]
    edges: list[tuple[str, str, str]]  # (from key, to key, label)
    width: float
    height: float
    truncated: bool
    run_ids: frozenset[int]
    max_run_id: int

    @property
    def focus_key(self) -> str:
        return f"event-{self.focus}"

    def paths(self) -> list[dict]:
        where = {n.key: n for n in self.nodes}
        out = []
        for source, target, label in self.edges:
            a, b = where[source], where[target]
            x1, y1 = a.x + LINEAGE_W, a.y + LINEAGE_H / 2
            x2, y2 = b.x, b.y + LINEAGE_H / 2
            out.append(
                {
                    "d": curve(x1, y1, x2, y2),
                    "label": label,
                    "from": source,
                    "to": target,
                    "lx": (x1 + x2) / 2,
                    "ly": (y1 + y2) / 2 - 4,
                }
            )
        return out

    @property
    def signature(self) -> tuple:
        return tuple((n.key, n.state) for n in self.nodes), tuple(self.edges), self.truncated


LINEAGE_W, LINEAGE_H = 190.0, 46.0
RUN_EVENT_SOURCE = re.compile(r"^/signalbox/runs/(\d+)$")


def emitting_run_id(event: Event) -> int | None:
    """The run that emitted `event`: run events name it (sbrun), emit_event steps publish
    from /signalbox/runs/<id> unless their config chose another source."""
    marked = (event.extensions or {}).get(RUN_EXTENSION)
    if isinstance(marked, int) or (isinstance(marked, str) and marked.isdigit()):
        return int(marked)
    found = RUN_EVENT_SOURCE.match(event.source) if event.channel == "run" else None
    return int(found.group(1)) if found else None


def lineage_root(event: Event, *, hidden: frozenset[int] = frozenset(), max_up: int = 6) -> Event:
    """Walk up the causation chain (event <- run that emitted it <- its trigger event) to
    the event that started it all, so any event of a conversation shows the whole tree.
    The walk stops below a run or an event of a workflow in `hidden`: the tree is drawn
    from the highest event the asker may see."""
    current = event
    for _ in range(max_up):
        run_id = emitting_run_id(current)
        if run_id is None:
            break
        emitter = Run.objects.filter(pk=run_id).values_list("event_id", "workflow_id").first()
        if emitter is None or emitter[1] in hidden or emitter[0] is None:
            break
        parent = visible_events(Event.objects.filter(pk=emitter[0]), hidden=hidden).first()
        if parent is None or parent.pk == current.pk:
            break
        current = parent
    return current


def lineage(
    event_id: int, *, hidden: frozenset[int] = frozenset(), max_depth: int = 6, max_nodes: int = 120
) -> Lineage | None:
    """The causation graph from one event: the runs it started, the events those runs
    emitted (run events and emit_event steps), their child runs, the runs those events
    started, and so on, breadth first, bounded in depth and size. None when there is no
    such event or it belongs to a workflow in `hidden` (event_selectors.hidden_events);
    runs of those workflows, and so what they emitted, are left out of the graph."""
    focus = visible_events(Event.objects.filter(pk=event_id), hidden=hidden).first()
    if focus is None:
        return None
    root = lineage_root(focus, hidden=hidden)
    nodes: dict[str, LineageNode] = {}
    edges: list[tuple[str, str, str]] = []
    truncated = False

    def add(node: LineageNode) -> bool:
        nonlocal truncated
        if node.key in nodes:
            return False
        if len(nodes) >= max_nodes:
            truncated = True
            return False
        nodes[node.key] = node
        return True

    def event_node(event: Event, depth: int) -> LineageNode:
        return LineageNode(
            f"event-{event.pk}",
            "event",
            event.pk,
            event.type,
            f"#{event.pk} {event.source}",
            event.validation,
            depth,
        )

    def run_node(run: Run, depth: int) -> LineageNode:
        return LineageNode(
            f"run-{run.pk}",
            "run",
            run.pk,
            run.workflow.slug,
            f"run #{run.pk} · {run.origin}",
            run.status,
            depth,
        )

    add(event_node(root, 0))
    frontier_events, depth = [root.pk], 0
    run_ids: set[int] = set()
    while frontier_events and depth < max_depth and not truncated:
        runs = list(
            Run.objects.select_related("workflow")
            .filter(event_id__in=frontier_events)
            .exclude(origin=SHADOW)  # a draft tried on the event, not something it caused
            .exclude(workflow_id__in=sorted(hidden))
            .order_by("id")[: max_nodes + 1]
        )
        frontier_runs = []
        for run in runs:
            if add(run_node(run, depth + 1)):
                frontier_runs.append(run.pk)
            edges.append((f"event-{run.event_id}", f"run-{run.pk}", "started"))
        children = list(
            Run.objects.select_related("workflow", "parent_step")
            .filter(parent_step__run_id__in=frontier_runs)
            .exclude(workflow_id__in=sorted(hidden))
            .order_by("id")[: max_nodes + 1]
        )
        for child in children:
            if add(run_node(child, depth + 2)):
                frontier_runs.append(child.pk)
            edges.append((f"run-{child.parent_step.run_id}", f"run-{child.pk}", "child"))
        run_ids.update(frontier_runs)
        # A child run's trigger event is drawn as the parent-child edge instead.
        child_events = {c.event_id for c in children}
        next_events: list[int] = []
        for run_id, events in emitted_events(frontier_runs).items():
            for event in events:
                if event.pk in child_events:
                    continue
                if add(event_node(event, depth + 2)):
                    next_events.append(event.pk)
                edges.append((f"run-{run_id}", f"event-{event.pk}", "emitted"))
        frontier_events, depth = next_events, depth + 2
    edges = [e for e in dict.fromkeys(edges) if e[0] in nodes and e[1] in nodes]
    ordered = sorted(nodes.values(), key=lambda n: (n.depth, n.kind, n.pk))
    positions, width, height = layered_positions(
        [n.key for n in ordered],
        [(a, b) for a, b, _ in edges],
        node_w=LINEAGE_W,
        node_h=LINEAGE_H,
    )
    for node in ordered:
        node.x, node.y = positions[node.key]
    return Lineage(
        focus.pk,
        ordered,
        edges,
        width,
        height,
        truncated,
        frozenset(run_ids),
        max(run_ids, default=0),
    )
