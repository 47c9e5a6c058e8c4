"""Parse and validate a workflow definition into plain dataclasses.

Pure Python (no Django, no Celery). Validation lists every problem it finds, each with a
JSON-pointer path, instead of stopping at the first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from workflows.core.secret_places import mentions_secrets, misplaced_secrets

FORMAT_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "schemas" / "workflow-definition.schema.json").read_text()
)
_FORMAT_VALIDATOR = jsonschema.Draft202012Validator(FORMAT_SCHEMA)
STEP_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
FAILURE = "failure"
# Where an editor draws a node: kept in the document, never read by the engine.
LAYOUT_KEYS = frozenset({"position"})


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class InvalidDefinition(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.path}: {p.message}" for p in problems))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff: str = "exponential"  # or "fixed"
    delay_seconds: float = 1.0
    max_delay_seconds: float = 300.0
    jitter: bool = True
    retry_on: tuple[str, ...] = ()  # error-code prefixes; empty: what the step marks retryable

    def retries(self, *, retryable: bool, code: str) -> bool:
        if self.retry_on:
            return any(code.startswith(prefix) for prefix in self.retry_on)
        return retryable


@dataclass(frozen=True)
class Trigger:
    event: str = ""
    filter: str = ""
    webhook: str = ""
    schedule: str = ""
    timezone: str = "UTC"
    manual: bool = False


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    port: str = "success"


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    config: Mapping[str, Any]
    after: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    join: str = "all"
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class Concurrency:
    max_runs: int | None = None
    ordered: bool = False


@dataclass(frozen=True)
class Definition:
    name: str
    triggers: tuple[Trigger, ...]
    steps: Mapping[str, Step]  # in definition order
    edges: tuple[Edge, ...] = ()  # `after` included, as success edges
    vars: Mapping[str, Any] = field(default_factory=dict)
    concurrency: Concurrency = field(default_factory=Concurrency)

    def incoming(self, step_id: str) -> list[Edge]:
        return [e for e in self.edges if e.target == step_id]

    def outgoing(self, step_id: str) -> list[Edge]:
        return [e for e in self.edges if e.source == step_id]

    def downstream(self, step_id: str) -> list[str]:
        return list(dict.fromkeys(e.target for e in self.outgoing(step_id)))

    def roots(self) -> list[str]:
        targets = {e.target for e in self.edges}
        return [s for s in self.steps if s not in targets]

    def handles_failure(self, step_id: str) -> bool:
        return any(e.port == FAILURE for e in self.outgoing(step_id))


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # PostgreSQL stores neither
# As deep as the JSON reader lets a body nest (events.envelope): deeper values reach the
# validators' recursion limit, and no workflow needs them.
MAX_DEPTH = 64


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects nest deeper than `limit`; iterative, so that no depth can
    exhaust the stack while asking."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def _unstorable(value: Any, path: tuple):
    """Paths of the strings (keys included) that the database cannot store."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _UNSTORABLE.search(key):
                yield (*path, key)
            yield from _unstorable(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unstorable(item, (*path, index))


def _pointer(parts) -> str:
    # RFC 6901: "~" and "/" inside a key are escaped, so a header named "a/b" stays one segment.
    escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in parts)
    return "/" + "/".join(escaped) if parts else "/"


ExpressionChecker = Callable[[str], str | None]  # returns an error message or None
TemplateChecker = Callable[[Any], list[tuple[str, str]]]  # [(path, message)]


def parse(
    raw: Any,
    *,
    kinds: Mapping[str, Any],
    check_expression: ExpressionChecker | None = None,
    check_templates: TemplateChecker | None = None,
    check_secrets: bool = True,
) -> Definition:
    """Validate `raw` and return a Definition, or raise InvalidDefinition with every problem.

    `kinds` maps a step kind name to an object with `config_schema`, `ports(config)` and
    `expressions(config)` (the step registry). The checkers validate CEL expressions and
    `{{ … }}` templates; without them expressions are not checked. `check_secrets` refuses
    a `secrets.` use outside the secret-capable fields of its step kind (off only to load a
    version stored before the rule: its step then fails when it would render one).
    """
    if _too_deep(raw):
        raise InvalidDefinition([Problem("/", f"nested deeper than {MAX_DEPTH} levels")])
    problems = [
        Problem(_pointer(err.absolute_path), err.message)
        for err in sorted(
            _FORMAT_VALIDATOR.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))
        )
    ]
    problems += [
        Problem(_pointer(path), "text cannot contain NUL characters or unpaired surrogates")
        for path in _unstorable(raw, ())
    ]
    if problems:
        raise InvalidDefinition(problems)

    steps_raw = raw["steps"]
    ids = [s["id"] for s in steps_raw]
    index_of: dict[str, int] = {}
    for i, step_id in enumerate(ids):
        if step_id in index_of:
            problems.append(Problem(f"/steps/{i}/id", f"duplicate step id {step_id!r}"))
        else:
            index_of[step_id] = i

    def expression_problem(path: str, expression: str) -> None:
        if check_expression is not None and (message := check_expression(expression)):
            problems.append(Problem(path, message))

    ports: dict[str, set[str]] = {}
    for i, s in enumerate(steps_raw):
        kind = kinds.get(s["kind"])
        config = s.get("config", {})
        if kind is None:
            known = ", ".join(sorted(kinds))
            problems.append(
                Problem(f"/steps/{i}/kind", f"unknown step kind {s['kind']!r} (known: {known})")
            )
            continue
        validator = jsonschema.Draft202012Validator(kind.config_schema)
        config_errors = sorted(validator.iter_errors(config), key=str)
        for err in config_errors:
            problems.append(
                Problem(_pointer(["steps", i, "config", *err.absolute_path]), err.message)
            )
        if config_errors:
            continue
        kind_ports = getattr(kind, "ports", None)
        ports[s["id"]] = {*(kind_ports(config) if kind_ports else ["success"]), FAILURE}
        kind_expressions = getattr(kind, "expressions", None)
        for path, expression in kind_expressions(config) if kind_expressions else []:
            expression_problem(f"/steps/{i}/config{path}", expression)
        if check_templates is not None:
            for path, message in check_templates(config):
                problems.append(Problem(f"/steps/{i}/config{path}", message))
        if check_secrets and hasattr(kind, "secret_capable"):
            for path, message in misplaced_secrets(kind, config):
                problems.append(Problem(f"/steps/{i}/config{path}", message))

    for t, trigger in enumerate(raw.get("triggers", [])):
        if not set(trigger) - LAYOUT_KEYS:
            # The schema refuses an empty trigger; one that only has a place on the canvas
            # starts nothing either.
            problems.append(
                Problem(f"/triggers/{t}", "a trigger needs an event, webhook, schedule or manual")
            )
        if "filter" in trigger:
            expression_problem(f"/triggers/{t}/filter", trigger["filter"])
            if check_secrets and mentions_secrets(trigger["filter"]):
                problems.append(
                    Problem(
                        f"/triggers/{t}/filter",
                        "secrets cannot be used in a trigger filter: a secret may only go "
                        "into a secret-capable step field",
                    )
                )
        if "filter" in trigger and "event" not in trigger:
            problems.append(Problem(f"/triggers/{t}/filter", "a filter needs an event trigger"))

    edges: list[Edge] = []
    for i, s in enumerate(steps_raw):
        for j, dep in enumerate(s.get("after", [])):
            path = f"/steps/{i}/after/{j}"
            if dep == s["id"]:
                problems.append(Problem(path, "a step cannot come after itself"))
            elif dep not in index_of:
                problems.append(Problem(path, f"no step with id {dep!r}"))
            else:
                edges.append(Edge(dep, s["id"], "success"))
    for k, e in enumerate(raw.get("edges", [])):
        edge = Edge(e["from"], e["to"], e.get("port", "success"))
        bad = False
        for end, name in (("from", edge.source), ("to", edge.target)):
            if name not in index_of:
                problems.append(Problem(f"/edges/{k}/{end}", f"no step with id {name!r}"))
                bad = True
        if bad:
            continue
        if edge.source == edge.target:
            problems.append(Problem(f"/edges/{k}", "an edge cannot loop back to its own step"))
        elif edge.source in ports and edge.port not in ports[edge.source]:
            allowed = ", ".join(sorted(ports[edge.source]))
            problems.append(
                Problem(
                    f"/edges/{k}/port",
                    f"step {edge.source!r} has no port {edge.port!r} (it has: {allowed})",
                )
            )
        elif edge in edges:
            problems.append(Problem(f"/edges/{k}", "duplicate edge"))
        else:
            edges.append(edge)

    if not problems:
        cycle = _find_cycle(ids, edges)
        if cycle:
            problems.append(Problem("/steps", "steps form a cycle: " + " -> ".join(cycle)))
    if not problems:
        targets = {e.target for e in edges}
        reachable = _reachable([i for i in ids if i not in targets], edges)
        for step_id in ids:
            if step_id not in reachable:
                problems.append(
                    Problem(
                        f"/steps/{index_of[step_id]}",
                        f"step {step_id!r} can never run (unreachable)",
                    )
                )
    if problems:
        raise InvalidDefinition(problems)

    return Definition(
        name=raw["name"],
        triggers=tuple(
            Trigger(**{k: v for k, v in t.items() if k not in LAYOUT_KEYS})
            for t in raw.get("triggers", [])
        ),
        steps={
            s["id"]: Step(
                id=s["id"],
                kind=s["kind"],
                config=s.get("config", {}),
                after=tuple(s.get("after", [])),
                retry=_retry(s.get("retry", {})),
                join=s.get("join", "all"),
                timeout_seconds=s.get("timeout_seconds"),
            )
            for s in steps_raw
        },
        edges=tuple(edges),
        vars=raw.get("vars", {}),
        concurrency=Concurrency(**raw.get("concurrency", {})),
    )


def _retry(raw: Mapping[str, Any]) -> RetryPolicy:
    values = dict(raw)
    if "retry_on" in values:
        values["retry_on"] = tuple(values["retry_on"])
    return RetryPolicy(**values)


def _find_cycle(ids: list[str], edges: list[Edge]) -> list[str] | None:
    """Return one cycle as a list of step ids (first id repeated at the end), or None."""
    after: dict[str, list[str]] = {i: [] for i in ids}
    for edge in edges:
        after[edge.target].append(edge.source)
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(after, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for dep in after[node]:
            if colour[dep] == grey:
                return [*stack[stack.index(dep) :], dep]
            if colour[dep] == white and (found := visit(dep)):
                return found
        stack.pop()
        colour[node] = black
        return None

    for node in after:
        if colour[node] == white and (found := visit(node)):
            return found
    return None


def _reachable(roots: list[str], edges: list[Edge]) -> set[str]:
    seen, todo = set(roots), list(roots)
    while todo:
        node = todo.pop()
        for edge in edges:
            if edge.source == node and edge.target not in seen:
                seen.add(edge.target)
                todo.append(edge.target)
    return seen
