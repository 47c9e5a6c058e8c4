"""A run drawn for its page: the workflow graph laid out in layers with each step's
state, and the timeline of its attempts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from workflows.catalog.definition_parsing import definition_for
from workflows.runs.models import Run, StepRun

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
