"""What an expression can read at a node: the event's attributes and the `data` fields of
its latest registered schema, the outputs of the steps that can run before it, the run,
the definition's `vars` and the names of stored secrets."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workflows.access.models import Secret
from workflows.authoring.definitions import manual_event_type, schedule_event_type
from workflows.authoring.preflight import upstream_of
from workflows.events.models import EventSchema, EventType, Webhook


# --- what expressions can read ---------------------------------------------------------------
@dataclass(frozen=True)
class Variable:
    path: str
    type: str = ""
    note: str = ""


@dataclass(frozen=True)
class VariableGroup:
    title: str
    variables: list[Variable]


CLOUDEVENT_ATTRIBUTES = (
    ("event.type", "string", "the CloudEvents type"),
    ("event.source", "string", ""),
    ("event.id", "string", ""),
    ("event.subject", "string", "when the event has one"),
    ("event.time", "string", "RFC 3339"),
)
OUTPUT_HINTS = {
    "log": ("message",),
    "http_request": ("status", "headers", "body"),
    "condition": ("result",),
    "switch": ("case",),
    "filter": ("passed",),
    "emit_event": ("id", "ce_id", "type", "duplicate"),
    "for_each": ("results", "count"),
    "wait_for_event": ("data", "type", "timed_out"),
    "sub_workflow": ("run", "status", "output"),
    "delay": ("until",),
}
RUN_FIELDS = ("id", "workflow", "version", "correlation_id", "started_at")
MAX_SCHEMA_FIELDS = 80
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _member(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if IDENTIFIER.match(key) else f"{prefix}[{json.dumps(key)}]"


def schema_variables(schema: Any, prefix: str = "event.data", depth: int = 0) -> list[Variable]:
    """The fields a JSON Schema describes, as CEL paths (objects followed four levels deep)."""
    out: list[Variable] = []
    if not isinstance(schema, dict) or depth > 4:
        return out
    for key, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        path = _member(prefix, str(key))
        kind = prop.get("type", "")
        kind = "/".join(kind) if isinstance(kind, list) else str(kind)
        out.append(Variable(path, kind, str(prop.get("description", ""))[:120]))
        if prop.get("type") == "object":
            out += schema_variables(prop, path, depth + 1)
        if len(out) >= MAX_SCHEMA_FIELDS:
            break
    return out[:MAX_SCHEMA_FIELDS]


def _trigger_types(slug: str, raw: Mapping[str, Any]) -> list[str]:
    types: list[str] = []
    for trigger in raw.get("triggers") or []:
        if not isinstance(trigger, dict):
            continue
        if trigger.get("event"):
            types.append(str(trigger["event"]))
        elif trigger.get("webhook"):
            hook = Webhook.objects.filter(slug=str(trigger["webhook"])).first()
            if hook:
                types.append(hook.event_type)
        elif trigger.get("schedule"):
            types.append(schedule_event_type(slug))
        elif trigger.get("manual"):
            types.append(manual_event_type(slug))
    return list(dict.fromkeys(types))


def event_variables(
    slug: str, raw: Mapping[str, Any], only_trigger: int | None = None
) -> list[VariableGroup]:
    triggers = [t for t in raw.get("triggers") or [] if isinstance(t, dict)]
    if only_trigger is not None:
        triggers = triggers[only_trigger : only_trigger + 1]
    types = _trigger_types(slug, {"triggers": triggers})
    groups = [
        VariableGroup(
            "The event (CloudEvents attributes)",
            [Variable(p, t, n) for p, t, n in CLOUDEVENT_ATTRIBUTES],
        )
    ]
    for event_type in types:
        schema = (
            EventSchema.objects.filter(event_type__name=event_type).order_by("-version").first()
        )
        if schema is not None:
            fields = schema_variables(schema.schema)
            groups.append(
                VariableGroup(
                    f"event.data of {event_type} (schema v{schema.version})",
                    fields or [Variable("event.data", "", "the schema names no properties")],
                )
            )
        elif event_type == schedule_event_type(slug):
            groups.append(
                VariableGroup(
                    f"event.data of {event_type}", [Variable("event.data.workflow", "string")]
                )
            )
        else:
            known = EventType.objects.filter(name=event_type).exists()
            groups.append(
                VariableGroup(
                    f"event.data of {event_type}",
                    [
                        Variable(
                            "event.data",
                            "",
                            "no schema registered" + ("" if known else " (unknown type)"),
                        )
                    ],
                )
            )
    return groups


def upstream_steps(raw: Mapping[str, Any], step_id: str) -> list[str]:
    """Every step that can have finished before `step_id` starts, in definition order."""
    seen = upstream_of(raw, step_id)
    order = [s.get("id") for s in raw.get("steps") or [] if isinstance(s, dict)]
    return [s for s in order if s in seen]


def step_variables(slug: str, raw: Mapping[str, Any], index: int) -> list[VariableGroup]:
    steps = raw.get("steps") or []
    step = steps[index] if 0 <= index < len(steps) and isinstance(steps[index], dict) else {}
    groups = event_variables(slug, raw)
    kinds = {s.get("id"): s.get("kind") for s in steps if isinstance(s, dict)}
    upstream = upstream_steps(raw, str(step.get("id", "")))
    variables: list[Variable] = []
    for step_id in upstream:
        hints = OUTPUT_HINTS.get(str(kinds.get(step_id)), ())
        variables.append(Variable(f"steps.{step_id}.output", "", f"output of {kinds.get(step_id)}"))
        variables += [Variable(f"steps.{step_id}.output.{h}") for h in hints]
        variables.append(Variable(f"steps.{step_id}.port", "string", "the port it left through"))
    groups.append(
        VariableGroup(
            "Outputs of the steps before this one",
            variables or [Variable("steps", "", "no step comes before this one")],
        )
    )
    if step.get("kind") == "for_each":
        groups.append(
            VariableGroup(
                "Inside do",
                [
                    Variable("item", "", "the current item"),
                    Variable("index", "int", "its position"),
                ],
            )
        )
    vars_ = raw.get("vars") if isinstance(raw.get("vars"), dict) else {}
    groups.append(
        VariableGroup(
            "The run and the definition",
            [Variable(f"run.{f}") for f in RUN_FIELDS]
            + [Variable(_member("vars", str(k))) for k in vars_],
        )
    )
    secret_names = list(Secret.objects.order_by("name").values_list("name", flat=True)[:50])
    if secret_names:
        groups.append(
            VariableGroup(
                "Secrets (masked in outputs)",
                [Variable(_member("secrets", n)) for n in secret_names],
            )
        )
    return groups
