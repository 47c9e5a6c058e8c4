"""Parse and validate a workflow definition into plain dataclasses.

Pure Python (no Django, no Celery). Validation lists every problem it finds, each with a
JSON-pointer path, instead of stopping at the first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

FORMAT_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).parent / "schemas" / "workflow-definition.schema.json").read_text()
)
_FORMAT_VALIDATOR = jsonschema.Draft202012Validator(FORMAT_SCHEMA)
STEP_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


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


@dataclass(frozen=True)
class Trigger:
    event: str


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    config: Mapping[str, Any]
    after: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Definition:
    name: str
    triggers: tuple[Trigger, ...]
    steps: Mapping[str, Step]  # in definition order

    def downstream(self, step_id: str) -> list[str]:
        return [s.id for s in self.steps.values() if step_id in s.after]

    def roots(self) -> list[str]:
        return [s.id for s in self.steps.values() if not s.after]


def _pointer(parts) -> str:
    return "/" + "/".join(str(p) for p in parts) if parts else "/"


def parse(raw: Any, *, kinds: Mapping[str, Any]) -> Definition:
    """Validate `raw` and return a Definition, or raise InvalidDefinition with every problem.

    `kinds` maps a step kind name to an object with a `config_schema` (the step registry).
    """
    problems = [
        Problem(_pointer(err.absolute_path), err.message)
        for err in sorted(_FORMAT_VALIDATOR.iter_errors(raw), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        raise InvalidDefinition(problems)

    steps_raw = raw["steps"]
    ids = [s["id"] for s in steps_raw]
    seen: set[str] = set()
    for i, step_id in enumerate(ids):
        if step_id in seen:
            problems.append(Problem(f"/steps/{i}/id", f"duplicate step id {step_id!r}"))
        seen.add(step_id)

    for i, s in enumerate(steps_raw):
        kind = kinds.get(s["kind"])
        if kind is None:
            known = ", ".join(sorted(kinds))
            problems.append(
                Problem(f"/steps/{i}/kind", f"unknown step kind {s['kind']!r} (known: {known})")
            )
        else:
            validator = jsonschema.Draft202012Validator(kind.config_schema)
            for err in sorted(validator.iter_errors(s.get("config", {})), key=str):
                path = _pointer([*["steps", i, "config"], *err.absolute_path])
                problems.append(Problem(path, err.message))
        for j, dep in enumerate(s.get("after", [])):
            if dep == s["id"]:
                problems.append(Problem(f"/steps/{i}/after/{j}", "a step cannot come after itself"))
            elif dep not in seen:
                problems.append(Problem(f"/steps/{i}/after/{j}", f"no step with id {dep!r}"))

    if not problems:
        cycle = _find_cycle({s["id"]: list(s.get("after", [])) for s in steps_raw})
        if cycle:
            problems.append(Problem("/steps", "steps form a cycle: " + " -> ".join(cycle)))
    if problems:
        raise InvalidDefinition(problems)

    return Definition(
        name=raw["name"],
        triggers=tuple(Trigger(event=t["event"]) for t in raw.get("triggers", [])),
        steps={
            s["id"]: Step(
                id=s["id"],
                kind=s["kind"],
                config=s.get("config", {}),
                after=tuple(s.get("after", [])),
                retry=RetryPolicy(**s.get("retry", {})),
            )
            for s in steps_raw
        },
    )


def _find_cycle(after: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle as a list of step ids (first id repeated at the end), or None."""
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
