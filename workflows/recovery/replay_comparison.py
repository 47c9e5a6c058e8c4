"""Compare a replay (or shadow) run with its original, step by step: what changed in
each step's status, port and output (a JSON diff), and a batch's summary per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workflows.catalog.definition_parsing import definition_for
from workflows.core.states import TERMINAL_RUN
from workflows.recovery.models import ReplayBatch
from workflows.recovery.replay_plans import latest_attempts
from workflows.runs.models import Run, StepRun

MAX_CHANGES = 50


@dataclass(frozen=True)
class Change:
    path: str
    before: Any
    after: Any
    kind: str  # "changed" | "added" | "removed"

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path or "/",
            "before": self.before,
            "after": self.after,
            "kind": self.kind,
        }


def json_diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """Where two JSON values differ, as JSON-pointer paths (at most MAX_CHANGES)."""
    changes: list[Change] = []

    def walk(a: Any, b: Any, at: str) -> None:
        if len(changes) >= MAX_CHANGES:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                pointer = f"{at}/{str(key).replace('~', '~0').replace('/', '~1')}"
                if key not in b:
                    changes.append(Change(pointer, a[key], None, "removed"))
                elif key not in a:
                    changes.append(Change(pointer, None, b[key], "added"))
                else:
                    walk(a[key], b[key], pointer)
        elif isinstance(a, list) and isinstance(b, list):
            for index in range(max(len(a), len(b))):
                pointer = f"{at}/{index}"
                if index >= len(b):
                    changes.append(Change(pointer, a[index], None, "removed"))
                elif index >= len(a):
                    changes.append(Change(pointer, None, b[index], "added"))
                else:
                    walk(a[index], b[index], pointer)
        elif a != b or type(a) is not type(b):
            changes.append(Change(at, a, b, "changed"))

    walk(before, after, path)
    return changes[:MAX_CHANGES]


@dataclass(frozen=True)
class StepComparison:
    step_id: str
    original: StepRun | None
    replay: StepRun | None
    reused: bool
    changes: list[Change]

    @property
    def status_changed(self) -> bool:
        return (self.original.status if self.original else None) != (
            self.replay.status if self.replay else None
        )

    @property
    def same(self) -> bool:
        return not self.status_changed and not self.changes

    @property
    def verdict(self) -> str:
        if self.reused:
            return "reused"
        if self.replay is None:
            return "not run"
        if self.original is None:
            return "new"
        if self.status_changed:
            return "status differs"
        return "output differs" if self.changes else "same"

    def as_json(self) -> dict[str, Any]:
        def side(step_run: StepRun | None) -> dict[str, Any] | None:
            if step_run is None:
                return None
            return {
                "status": step_run.status,
                "attempt": step_run.attempt,
                "output": step_run.output,
                "error": step_run.error,
                "port": step_run.port,
                "idempotency_key": step_run.idempotency_key,
            }

        return {
            "step": self.step_id,
            "verdict": self.verdict,
            "reused": self.reused,
            "status_changed": self.status_changed,
            "original": side(self.original),
            "replay": side(self.replay),
            "changes": [c.as_json() for c in self.changes],
        }


def compare_runs(replay: Run, original: Run | None = None) -> list[StepComparison]:
    """The replay's steps beside the original's, in the replay's definition order."""
    original = original or replay.replay_of
    if original is None:
        return []
    mine, theirs = latest_attempts(replay), latest_attempts(original)
    order = list(definition_for(replay.version).steps)
    order += [s for s in theirs if s not in order]
    found = []
    for step_id in order:
        new, old = mine.get(step_id), theirs.get(step_id)
        if new is None and old is None:
            continue
        changes = []
        if new is not None and old is not None and new.reused_from_id is None:
            changes = json_diff(old.output, new.output)
        found.append(StepComparison(step_id, old, new, bool(new and new.reused_from_id), changes))
    return found


@dataclass
class StepSummary:
    step_id: str
    compared: int = 0
    same: int = 0
    differ: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


def shadow_summary(batch: ReplayBatch) -> list[StepSummary]:
    """Per step: in how many shadow runs did the output (or status) differ from the original."""
    items = [i for i in batch.summary.get("items", []) if i.get("replay")]
    runs = {
        r.pk: r
        for r in Run.objects.filter(pk__in=[i["replay"] for i in items]).select_related(
            "version", "replay_of"
        )
    }
    summary: dict[str, StepSummary] = {}
    for item in items:
        shadow = runs.get(item["replay"])
        if shadow is None or shadow.status not in TERMINAL_RUN:
            continue
        for comparison in compare_runs(shadow):
            entry = summary.setdefault(comparison.step_id, StepSummary(comparison.step_id))
            entry.compared += 1
            if comparison.same:
                entry.same += 1
            else:
                entry.differ += 1
                if len(entry.examples) < 3:
                    entry.examples.append(
                        {
                            "original": shadow.replay_of_id,
                            "shadow": shadow.pk,
                            "comparison": comparison.as_json(),
                        }
                    )
    return list(summary.values())
