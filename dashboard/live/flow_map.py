"""The live flow map on the live event flow page: sources (the channel an event came in on)
→ event types → workflows, each edge drawn as thick as its traffic over the last minutes,
failing edges red and dashed. Laid out here, drawn as inline SVG by
templates/dashboard/_flow_map.html; the counts come from Redis (workflows/infra/flow_counters.py),
never from the events or runs tables.

Each edge links to the page filtered to it (`?channel=&type=` or `?type=&workflow=`), so a
click filters the table under the map and the URL says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlencode

from workflows.infra import flow_counters

# The channels of workflows.models.Event, in the order the map draws them.
CHANNELS = {
    "http": "HTTP API",
    "webhook": "Webhooks",
    "schedule": "Schedules",
    "connector": "Connections",
    "stream": "Redis streams",
    "manual": "Sent by hand",
    "demo": "Demo traffic",
    "run": "Runs (emitted)",
}
# A map past this many types or workflows draws the busiest and says how many it left out:
# it must stay readable, and its frame small, whatever the number of types.
MAX_TYPES = 14
MAX_WORKFLOWS = 14

NODE_WIDTH = 176.0
NODE_HEIGHT = 34.0
NODE_GAP = 12.0
COLUMN_X = (8.0, 340.0, 672.0)  # gaps wide enough for a label like "12.5/min · 3 failed"
WIDTH = COLUMN_X[2] + NODE_WIDTH + 8.0
TOP = 28.0  # below the column headings


@dataclass
class Node:
    key: str
    column: int
    label: str
    title: str
    count: int = 0
    x: float = 0.0
    y: float = 0.0

    @property
    def middle(self) -> float:
        return self.y + NODE_HEIGHT / 2


@dataclass
class Edge:
    source: Node
    target: Node
    count: int
    failed: int
    rate: float  # per minute
    filter: dict[str, str]
    d: str = ""
    width: float = 1.5
    label_x: float = 0.0
    label_y: float = 0.0

    @property
    def failing(self) -> bool:
        return self.failed > 0

    @property
    def href(self) -> str:
        return "?" + urlencode(self.filter)

    @property
    def rate_text(self) -> str:
        return rate_text(self.rate)

    @property
    def label(self) -> str:
        text = f"{self.rate_text}/min"
        return f"{text} · {self.failed} failed" if self.failed else text


@dataclass
class FlowMap:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    height: float = TOP
    seconds: float = 0.0
    left_out_types: int = 0
    left_out_workflows: int = 0
    width: float = WIDTH
    columns: tuple[tuple[float, str], ...] = (
        (COLUMN_X[0], "Sources"),
        (COLUMN_X[1], "Event types"),
        (COLUMN_X[2], "Workflows"),
    )

    @property
    def empty(self) -> bool:
        return not self.edges

    @property
    def minutes(self) -> int:
        return flow_counters.WINDOW_MINUTES


def rate_text(rate: float) -> str:
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 10:
        return f"{rate:.1f}".removesuffix(".0")
    return f"{rate:.2f}".rstrip("0").rstrip(".") or "0"


def build(traffic: flow_counters.Traffic) -> FlowMap:
    """Lay out the map of `traffic` (already without what the viewer may not see)."""
    per_minute = 60.0 / max(traffic.seconds, 1.0)
    type_total: dict[str, int] = {}
    for (_channel, event_type), edge in traffic.inbound.items():
        type_total[event_type] = type_total.get(event_type, 0) + edge.count + edge.failed
    for (event_type, _workflow), edge in traffic.runs.items():
        type_total.setdefault(event_type, 0)
        type_total[event_type] += edge.count
    types = sorted(type_total, key=lambda t: (-type_total[t], t))
    kept_types = set(types[:MAX_TYPES])
    workflow_total: dict[str, int] = {}
    for (event_type, workflow), edge in traffic.runs.items():
        if event_type in kept_types:
            workflow_total[workflow] = workflow_total.get(workflow, 0) + edge.count + edge.failed
    workflows = sorted(workflow_total, key=lambda w: (-workflow_total[w], w))
    kept_workflows = set(workflows[:MAX_WORKFLOWS])

    channel_nodes: dict[str, Node] = {}
    type_nodes: dict[str, Node] = {}
    workflow_nodes: dict[str, Node] = {}
    edges: list[Edge] = []

    def channel_node(channel: str) -> Node:
        if channel not in channel_nodes:
            label = CHANNELS.get(channel, channel)
            channel_nodes[channel] = Node(f"channel:{channel}", 0, label, f"{label} ({channel})")
        return channel_nodes[channel]

    def type_node(event_type: str) -> Node:
        if event_type not in type_nodes:
            type_nodes[event_type] = Node(f"type:{event_type}", 1, event_type, event_type)
        return type_nodes[event_type]

    def workflow_node(slug: str) -> Node:
        if slug not in workflow_nodes:
            workflow_nodes[slug] = Node(f"workflow:{slug}", 2, slug, slug)
        return workflow_nodes[slug]

    for (channel, event_type), edge in sorted(traffic.inbound.items()):
        if event_type not in kept_types:
            continue
        edges.append(
            Edge(
                channel_node(channel),
                type_node(event_type),
                edge.count,
                edge.failed,
                edge.count * per_minute,
                {"channel": channel, "type": event_type},
            )
        )
    for (event_type, workflow), edge in sorted(traffic.runs.items()):
        if event_type not in kept_types or workflow not in kept_workflows:
            continue
        edges.append(
            Edge(
                type_node(event_type),
                workflow_node(workflow),
                edge.count,
                edge.failed,
                edge.count * per_minute,
                {"type": event_type, "workflow": workflow},
            )
        )
    for edge in edges:
        edge.source.count += edge.count
        edge.target.count += edge.count

    order = list(CHANNELS)
    channels = sorted(
        channel_nodes.values(),
        key=lambda n: (order.index(n.key[8:]) if n.key[8:] in order else len(order), n.key),
    )
    _stack(channels)
    # Types beside the sources that feed them most, workflows beside their types: fewer
    # crossings than any fixed order, at the cost of a sort.
    _stack(_by_neighbours(type_nodes.values(), edges, incoming=True))
    _stack(_by_neighbours(workflow_nodes.values(), edges, incoming=True))
    columns = [channels, list(type_nodes.values()), list(workflow_nodes.values())]
    height = max((len(c) for c in columns), default=0) * (NODE_HEIGHT + NODE_GAP) + TOP
    for column in columns:  # each column centred on the tallest
        used = len(column) * (NODE_HEIGHT + NODE_GAP)
        for node in column:
            node.y += (height - TOP - used) / 2
    _route(edges)
    return FlowMap(
        nodes=[*channels, *type_nodes.values(), *workflow_nodes.values()],
        edges=edges,
        height=max(height, TOP + NODE_HEIGHT),
        seconds=traffic.seconds,
        left_out_types=max(0, len(types) - MAX_TYPES),
        left_out_workflows=max(0, len(workflows) - MAX_WORKFLOWS),
    )


def _by_neighbours(nodes, edges: list[Edge], *, incoming: bool) -> list[Node]:
    """Nodes ordered by the weighted mean height of the nodes their edges come from."""
    sums: dict[str, tuple[float, float]] = {}
    for edge in edges:
        node, other = (edge.target, edge.source) if incoming else (edge.source, edge.target)
        weight = edge.count + edge.failed + 1
        total, weights = sums.get(node.key, (0.0, 0.0))
        sums[node.key] = (total + other.y * weight, weights + weight)

    def place(node: Node) -> tuple[float, int, str]:
        total, weights = sums.get(node.key, (0.0, 1.0))
        return (total / weights, -node.count, node.key)

    return sorted(nodes, key=place)


def _stack(nodes: list[Node]) -> None:
    for index, node in enumerate(nodes):
        node.x = COLUMN_X[node.column]
        node.y = TOP + index * (NODE_HEIGHT + NODE_GAP)


def _route(edges: list[Edge]) -> None:
    busiest = max((edge.count for edge in edges), default=0) or 1
    for edge in edges:
        x1, y1 = edge.source.x + NODE_WIDTH, edge.source.middle
        x2, y2 = edge.target.x, edge.target.middle
        bend = (x2 - x1) / 2
        edge.d = (
            f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} "
            f"{x2:.1f},{y2:.1f}"
        )
        # Thickness by the square root of the traffic: a quiet edge stays visible beside a
        # busy one.
        edge.width = round(1.5 + 7.0 * math.sqrt(edge.count / busiest), 1)
        edge.label_x = (x1 + x2) / 2
        edge.label_y = (y1 + y2) / 2 - edge.width / 2 - 3


def flow_map(*, hidden_slugs: frozenset[str] = frozenset()) -> FlowMap:
    """The map as a viewer who may not see `hidden_slugs` sees it now."""
    window = flow_counters.read_window()
    return build(flow_counters.traffic(window, hidden_slugs=hidden_slugs))
