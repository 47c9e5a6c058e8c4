"""An event's lineage: the events and runs it caused and that caused it (event → run →
step → emitted event → run), within what the reader may see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workflows.events.models import Event
from workflows.queries.events import visible_events
from workflows.queries.run_graph import STATE_COLOURS, curve, layered_positions
from workflows.queries.run_view import emitted_events
from workflows.queries.runs import SHADOW
from workflows.runs.models import Run, StepRun
from workflows.runs.producers import RUN_EXTENSION


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
        # The attempts' ids first: joined in one query, the planner walked every run in id
        # order looking for a child (the whole table when there was none).
        attempts = list(
            StepRun.objects.filter(run_id__in=frontier_runs).values_list("pk", flat=True)
        )
        children = list(
            Run.objects.select_related("workflow", "parent_step")
            .filter(parent_step_id__in=attempts)
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
