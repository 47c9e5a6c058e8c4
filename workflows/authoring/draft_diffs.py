"""What changed between two definitions of a workflow, for people: steps, edges,
triggers and settings added, removed or changed (the editor's "compare" and the
publish dialog).
"""

from __future__ import annotations

import json
from typing import Any

from workflows.core.definition import LAYOUT_KEYS

# --- diff ----------------------------------------------------------------------------------
STEP_FIELDS = ("kind", "name", "join", "timeout_seconds", "retry")
WORKFLOW_FIELDS = ("name", "description", "vars", "concurrency")


def _edge_set(raw: dict) -> set[tuple[str, str, str]]:
    edges: set[tuple[str, str, str]] = set()
    for step in raw.get("steps") or []:
        if not isinstance(step, dict):
            continue
        for source in step.get("after") or []:
            edges.add((str(source), str(step.get("id")), "success"))
    for edge in raw.get("edges") or []:
        if isinstance(edge, dict):
            edges.add(
                (str(edge.get("from")), str(edge.get("to")), str(edge.get("port") or "success"))
            )
    return edges


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def describe_trigger(trigger: Any) -> str:
    if not isinstance(trigger, dict):
        return _canonical(trigger)
    if "event" in trigger:
        text = f"event {trigger['event']}"
        return f"{text} if {trigger['filter']}" if trigger.get("filter") else text
    if "webhook" in trigger:
        return f"webhook {trigger['webhook']}"
    if "schedule" in trigger:
        return f"schedule {trigger['schedule']} ({trigger.get('timezone') or 'UTC'})"
    if trigger.get("manual"):
        return "manual"
    # Where the node is drawn is layout, not behaviour (as for steps, see diff_definitions).
    return _canonical({k: v for k, v in trigger.items() if k not in LAYOUT_KEYS})


def diff_definitions(before: dict, after: dict) -> dict[str, Any]:
    """What changed from `before` to `after`: workflow fields, triggers, each step (added,
    removed, or changed: its kind, name, join, timeout, retry and each config key) and the
    edges (`after` lists included). Node positions are layout, not behaviour: a step or a
    trigger that only moved counts as unchanged."""
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    workflow = [
        {"field": name, "before": before.get(name), "after": after.get(name)}
        for name in WORKFLOW_FIELDS
        if _canonical(before.get(name)) != _canonical(after.get(name))
    ]
    old_triggers = [describe_trigger(t) for t in before.get("triggers") or []]
    new_triggers = [describe_trigger(t) for t in after.get("triggers") or []]
    triggers = {
        "added": [t for t in new_triggers if t not in old_triggers],
        "removed": [t for t in old_triggers if t not in new_triggers],
    }

    def by_id(raw: dict) -> dict[str, dict]:
        return {s["id"]: s for s in raw.get("steps") or [] if isinstance(s, dict) and "id" in s}

    old_steps, new_steps = by_id(before), by_id(after)
    steps: list[dict[str, Any]] = []
    for step_id, step in new_steps.items():
        if step_id not in old_steps:
            steps.append(
                {
                    "id": step_id,
                    "change": "added",
                    "kind": step.get("kind"),
                    "fields": [],
                    "config": _config_changes({}, step.get("config")),
                }
            )
            continue
        old = old_steps[step_id]
        fields = [
            {"field": name, "before": old.get(name), "after": step.get(name)}
            for name in STEP_FIELDS
            if _canonical(old.get(name)) != _canonical(step.get(name))
        ]
        config = _config_changes(old.get("config"), step.get("config"))
        if fields or config:
            steps.append(
                {
                    "id": step_id,
                    "change": "changed",
                    "kind": step.get("kind"),
                    "fields": fields,
                    "config": config,
                }
            )
    for step_id, step in old_steps.items():
        if step_id not in new_steps:
            steps.append(
                {
                    "id": step_id,
                    "change": "removed",
                    "kind": step.get("kind"),
                    "fields": [],
                    "config": _config_changes(step.get("config"), {}),
                }
            )
    old_edges, new_edges = _edge_set(before), _edge_set(after)
    edges = {
        "added": [{"from": f, "to": t, "port": p} for f, t, p in sorted(new_edges - old_edges)],
        "removed": [{"from": f, "to": t, "port": p} for f, t, p in sorted(old_edges - new_edges)],
    }
    changed = bool(
        workflow
        or triggers["added"]
        or triggers["removed"]
        or steps
        or edges["added"]
        or edges["removed"]
    )
    return {
        "changed": changed,
        "workflow": workflow,
        "triggers": triggers,
        "steps": steps,
        "edges": edges,
    }


def _config_changes(old: Any, new: Any) -> list[dict[str, Any]]:
    old = old if isinstance(old, dict) else {}
    new = new if isinstance(new, dict) else {}
    changes = []
    for key in [*new, *(k for k in old if k not in new)]:
        if key not in old:
            changes.append({"key": key, "change": "added", "before": None, "after": new[key]})
        elif key not in new:
            changes.append({"key": key, "change": "removed", "before": old[key], "after": None})
        elif _canonical(old[key]) != _canonical(new[key]):
            changes.append({"key": key, "change": "changed", "before": old[key], "after": new[key]})
    return changes
