"""The editor's panels, server-side: config forms rendered from a step kind's JSON Schema,
the form data turned back into config, problems placed on the fields they concern, and
the variables an expression can read at a node.

Plain functions over plain data (the definition as a dict); the views render the results.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.utils.html import format_html

from workflows import expressions
from workflows.definition import STEP_ID, Problem
from workflows.models import EventSchema, EventType, Secret, Webhook
from workflows.services.definitions import manual_event_type, schedule_event_type
from workflows.services.drafts import describe_trigger, ports_of
from workflows.steps import registry

# --- icons: small stroke drawings, so no icon font or emoji font is needed ---------------------
ICONS = {
    "file-text": "M6 3h9l3 3v15H6z M9 9h6 M9 13h6 M9 17h4",
    "globe": "M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18z M3 12h18 M12 3c3.5 3 3.5 15 0 18 "
    "M12 3c-3.5 3-3.5 15 0 18",
    "wand": "M4 20L15 9 M13 7l4 4 M17 3v3 M20 6h-3 M19 11v2 M11 4h2",
    "send": "M3 11l18-8-8 18-2-8z M11 13l10-10",
    "mail": "M3 6h18v12H3z M3 6l9 7 9-7",
    "x-octagon": "M8 3h8l5 5v8l-5 5H8l-5-5V8z M9 9l6 6 M15 9l-6 6",
    "code": "M8 7l-5 5 5 5 M16 7l5 5-5 5 M13 5l-2 14",
    "git-branch": "M6 3v13 M6 16a2.5 2.5 0 1 0 0 5a2.5 2.5 0 1 0 0-5 "
    "M18 4a2.5 2.5 0 1 0 0 5a2.5 2.5 0 1 0 0-5 M18 9c0 5-12 3-12 7",
    "shuffle": "M3 7h4l10 10h4 M3 17h4l10-10h4 M18 4l3 3-3 3 M18 14l3 3-3 3",
    "filter": "M3 4h18l-7 8v6l-4 2v-8z",
    "clock": "M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18z M12 7v5l3 2",
    "bell": "M6 16v-5a6 6 0 0 1 12 0v5l2 2H4z M10 20a2 2 0 0 0 4 0",
    "layers": "M12 3l9 5-9 5-9-5z M3 13l9 5 9-5",
    "repeat": "M4 12a8 8 0 0 1 14-5 M18 3v4h-4 M20 12a8 8 0 0 1-14 5 M6 21v-4h4",
    "zap": "M13 2L4 14h7l-1 8 9-12h-7z",
    "link": "M10 14a4 4 0 0 0 6 0l3-3a4 4 0 0 0-6-6l-1 1 M14 10a4 4 0 0 0-6 0l-3 3a4 4 0 0 0 "
    "6 6l1-1",
    "calendar": "M4 5h16v15H4z M4 9h16 M8 3v4 M16 3v4",
    "play": "M7 4l13 8-13 8z",
    "diamond": "M12 3l9 9-9 9-9-9z",
}


def icon_svg(name: str) -> str:
    return format_html(
        '<svg class="icon" viewBox="0 0 24 24" aria-hidden="true"><path d="{}"/></svg>',
        ICONS.get(name, ICONS["diamond"]),
    )


# --- the palette -----------------------------------------------------------------------------
TRIGGER_KINDS = (
    {
        "kind": "event",
        "title": "Event",
        "icon": "zap",
        "template": {"event": ""},
        "description": "Start on every event of a CloudEvents type, optionally when a CEL "
        "filter is true.",
    },
    {
        "kind": "webhook",
        "title": "Webhook",
        "icon": "link",
        "template": {"webhook": ""},
        "description": "Start on every delivery to an inbound webhook (/hooks/<slug>).",
    },
    {
        "kind": "schedule",
        "title": "Schedule",
        "icon": "calendar",
        "template": {"schedule": "@daily", "timezone": "UTC"},
        "description": "Start on a cron schedule, an alias such as @daily, or @every 30s.",
    },
    {
        "kind": "manual",
        "title": "Manual",
        "icon": "play",
        "template": {"manual": True},
        "description": "Start by hand: the Send event form, the API or manage.py emit.",
    },
)
GROUP_ORDER = ("actions", "flow", "data", "utility")
GROUP_TITLES = {"actions": "Actions", "flow": "Flow", "data": "Data", "utility": "Utility"}


def palette() -> dict[str, Any]:
    """Trigger kinds and step kinds (grouped) with what the canvas needs to draw them."""
    kinds = registry.all_kinds()
    groups: dict[str, list[dict[str, Any]]] = {}
    for kind in sorted(kinds.values(), key=lambda k: k.title.lower()):
        groups.setdefault(kind.group, []).append(
            {
                "kind": kind.name,
                "title": kind.title,
                "description": kind.description,
                "icon": kind.icon,
                "svg": icon_svg(kind.icon),
                "ports": ports_of({"kind": kind.name, "config": {}}),
                "side_effects": kind.side_effects,
            }
        )
    ordered = sorted(groups, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))
    return {
        "triggers": [{**t, "svg": icon_svg(t["icon"])} for t in TRIGGER_KINDS],
        "groups": [
            {"name": g, "title": GROUP_TITLES.get(g, g.title()), "kinds": groups[g]}
            for g in ordered
        ],
    }


def trigger_kind(trigger: Any) -> str:
    if isinstance(trigger, dict):
        for name in ("event", "webhook", "schedule", "manual"):
            if name in trigger:
                return name
    return "event"


# --- config fields ---------------------------------------------------------------------------
LABELS = {
    "url": "URL",
    "json": "JSON body",
    "form": "Form body",
    "send_event": "Send the event's data as the body",
    "timeout_seconds": "Timeout (seconds)",
    "reply_to": "Reply-To",
    "cc": "Cc",
    "bcc": "Bcc",
    "html": "HTML body",
    "partitionkey": "Partition key",
    "do": "Do (kind and config per item)",
    "max_attempts": "Max attempts",
}
LONG_TEXT = 4096  # strings allowed longer than this get a textarea


def label_for(key: str) -> str:
    return LABELS.get(key) or key.replace("_", " ").capitalize()


@dataclass
class FormField:
    name: str  # the POST name: "config.url", "step.id", "retry.max_attempts", "trigger.event"
    label: str
    widget: str  # text | textarea | number | checkbox | select | json | expression
    value: str = ""
    checked: bool = False
    required: bool = False
    choices: list[tuple[str, str]] = field(default_factory=list)
    help: str = ""
    placeholder: str = ""
    errors: list[str] = field(default_factory=list)
    check: str = ""  # "expression": CEL; "template": strings with {{ … }}; "": none
    datalist: str = ""  # id of a <datalist> offering values

    @property
    def dom_id(self) -> str:
        return "f-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.name)

    @property
    def error_id(self) -> str:
        return "err-" + self.dom_id[2:]

    @property
    def check_id(self) -> str:
        return "chk-" + self.dom_id[2:]


def _widget(key: str, prop: Mapping[str, Any], expression_keys: set[str]) -> str:
    if "enum" in prop:
        return "select"
    kind = prop.get("type")
    if kind == "string":
        if key in expression_keys:
            return "expression"
        return "textarea" if prop.get("maxLength", 0) > LONG_TEXT else "text"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "checkbox"
    return "json"  # objects, arrays, and "any JSON"


def _shown(value: Any, widget: str) -> str:
    if value is None:
        return ""
    if widget == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def expression_keys(kind_name: str) -> set[str]:
    kind = registry.all_kinds().get(kind_name)
    return set(kind.expression_fields) if kind else set()


def config_fields(kind_name: str, config: Any, errors: Mapping[str, list[str]]) -> list[FormField]:
    """One field per property of the kind's config schema (and one per unknown key, so it
    can be seen and removed), filled from `config`."""
    kind = registry.all_kinds().get(kind_name)
    config = config if isinstance(config, dict) else {}
    if kind is None:
        return [
            FormField(
                name="config",
                label="Config",
                widget="json",
                value=_shown(config, "json"),
                errors=list(errors.get("", [])),
            )
        ]
    schema = kind.config_schema
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    exprs = set(kind.expression_fields)
    fields: list[FormField] = []
    for key, prop in props.items():
        widget = _widget(key, prop, exprs)
        value = config.get(key)
        default = prop.get("default")
        fields.append(
            FormField(
                name=f"config.{key}",
                label=label_for(key),
                widget=widget,
                value=_shown(value, widget),
                checked=bool(value) if widget == "checkbox" else False,
                required=key in required,
                choices=[("", f"(default: {default})" if default is not None else "—")]
                + [(str(c), str(c)) for c in prop.get("enum", [])]
                if widget == "select"
                else [],
                help=str(prop.get("description", "")),
                placeholder=_placeholder(prop, widget, default),
                errors=list(errors.get(key, [])),
                check=(
                    "expression"
                    if widget == "expression"
                    else "template"
                    if widget in ("text", "textarea")
                    else ""
                ),
            )
        )
    for key in config:
        if key not in props:
            fields.append(
                FormField(
                    name=f"config.{key}",
                    label=f"{key} (not a setting of {kind_name})",
                    widget="json",
                    value=_shown(config[key], "json"),
                    errors=list(errors.get(key, [])),
                    help="clear it to remove it",
                )
            )
    return fields


def _placeholder(prop: Mapping[str, Any], widget: str, default: Any) -> str:
    if widget == "number" and default is not None:
        return f"default {default}"
    if prop.get("pattern") == "^https?://":
        return "https://…"
    if widget == "json":
        return "JSON"
    return ""


def parse_config(
    kind_name: str, post: Mapping[str, Any], previous: Any
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The config a submitted form describes, and errors for fields that could not be read
    (those keep their previous value, so half-typed JSON never wipes a setting)."""
    previous = previous if isinstance(previous, dict) else {}
    kind = registry.all_kinds().get(kind_name)
    if kind is None:
        value, error = _read_json(post.get("config", ""))
        if error:
            return previous, {"": [error]}
        return (value if isinstance(value, dict) else {}), {}
    props: dict[str, Any] = kind.config_schema.get("properties", {})
    exprs = set(kind.expression_fields)
    config: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    keys = [*props, *(k for k in previous if k not in props)]
    for key in keys:
        prop = props.get(key, {})
        widget = _widget(key, prop, exprs) if key in props else "json"
        name = f"config.{key}"
        if widget == "checkbox":
            if name in post:
                config[key] = True
            elif prop.get("default") is True:
                config[key] = False
            continue
        text = post.get(name, "")
        if text is None or not str(text).strip():
            continue
        text = str(text)
        if widget == "select":
            match = [c for c in prop.get("enum", []) if str(c) == text]
            config[key] = match[0] if match else text
        elif widget == "number":
            number = _read_number(text, integer=prop.get("type") == "integer")
            if number is None:
                errors[key] = ["enter a number"]
                if key in previous:
                    config[key] = previous[key]
            else:
                config[key] = number
        elif widget == "json":
            value, error = _read_json(text)
            if error:
                errors[key] = [error]
                if key in previous:
                    config[key] = previous[key]
            else:
                config[key] = value
        else:
            config[key] = text
    return config, errors


def _read_number(text: str, *, integer: bool) -> int | float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if value.is_integer() and (integer or re.fullmatch(r"\s*-?\d+\s*", text)):
        return int(value)
    return None if integer else value


def _read_json(text: str) -> tuple[Any, str]:
    if not str(text).strip():
        return None, ""
    try:
        return json.loads(text), ""
    except ValueError as exc:
        return None, f"not valid JSON: {exc}"


# --- fixed fields: a step's own, a trigger's (not from a kind's config schema) -------------
NODE_FIELDS = ("step", "trigger")  # POST name prefixes of a node's own keys


@dataclass(frozen=True)
class FixedField:
    """A field the editor always shows (not one of a kind's config settings).

    `name` is the POST name `<where>.<key>`: `step.` and `trigger.` name a key of the node
    itself, any other `<where>` (`retry.`) a key of the object the node holds under that
    name. Problems are looked up as field_problems keys them: "id",
    "retry/max_attempts"."""

    name: str
    label: str
    widget: str = "text"
    required: bool = False
    choices: tuple[tuple[str, str], ...] = ()
    help: str = ""
    placeholder: str = ""
    check: str = ""
    datalist: str = ""
    listed: bool = False  # a list of strings, shown and typed comma-separated
    errors_also_from: tuple[str, ...] = ()

    def shown(self, value: Any) -> str:
        if self.widget == "number":
            return _shown(value, "number")
        if self.listed:
            # A hand-edited draft may hold anything here (its problem says what is wrong):
            # show it as it is rather than fail to render the panel.
            if isinstance(value, list | tuple):
                return ", ".join(map(str, value))
            return "" if value in (None, "") else str(value)
        # A required field shows whatever it holds, a null or 0 included (its problem says
        # why); an optional one shows a null, 0 or "" as left empty.
        return str(value) if self.required else str(value or "")

    def form_field(self, node: Mapping[str, Any], errors: Mapping[str, list[str]]) -> FormField:
        where, key = self.name.split(".", 1)
        values = node if where in NODE_FIELDS else node.get(where)
        values = values if isinstance(values, dict) else {}
        messages = [*errors.get(key if where in NODE_FIELDS else f"{where}/{key}", [])]
        for also in self.errors_also_from:
            messages += errors.get(also, [])
        return FormField(
            name=self.name,
            label=self.label,
            widget=self.widget,
            value=self.shown(values.get(key, "")),
            required=self.required,
            choices=list(self.choices),
            help=self.help,
            placeholder=self.placeholder,
            errors=messages,
            check=self.check,
            datalist=self.datalist,
        )


# --- the step's own fields -------------------------------------------------------------------
STEP_FIELDS = (
    FixedField(
        "step.id",
        "Id",
        required=True,
        help="lower-case letters, digits, - and _; edges refer to it",
    ),
    FixedField("step.name", "Name", placeholder="a label for people"),
    FixedField(
        "step.join",
        "Join",
        "select",
        choices=(
            ("", "(default: all)"),
            ("all", "all: wait for every incoming edge"),
            ("first", "first: start on the first edge taken"),
        ),
    ),
    FixedField("step.timeout_seconds", "Timeout (seconds)", "number", placeholder="default 900"),
    # Problems with the retry object as a whole show on its first field.
    FixedField(
        "retry.max_attempts",
        "Max attempts",
        "number",
        placeholder="default 1",
        errors_also_from=("retry",),
    ),
    FixedField(
        "retry.backoff",
        "Backoff",
        "select",
        choices=(
            ("", "(default: exponential)"),
            ("exponential", "exponential"),
            ("fixed", "fixed"),
        ),
    ),
    FixedField("retry.delay_seconds", "Delay (seconds)", "number", placeholder="default 1"),
    FixedField(
        "retry.retry_on",
        "Retry on (error codes, comma-separated)",
        placeholder="e.g. http.5, timeout",
        listed=True,
    ),
)


def step_fields(step: Mapping[str, Any], errors: Mapping[str, list[str]]) -> list[FormField]:
    return [spec.form_field(step, errors) for spec in STEP_FIELDS]


def parse_step(
    post: Mapping[str, Any], previous: Mapping[str, Any], other_ids: set[str]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The step a submitted form describes (config included); `previous` keeps what the
    form does not show (position, after) and any value that could not be read."""
    step = dict(previous)
    errors: dict[str, list[str]] = {}
    new_id = str(post.get("step.id", previous.get("id", ""))).strip()
    if not STEP_ID.match(new_id):
        errors["id"] = ["lower-case letter first, then letters, digits, - or _ (at most 63)"]
    elif new_id in other_ids:
        errors["id"] = [f"another step is already called {new_id!r}"]
    else:
        step["id"] = new_id
    for key in ("name", "join"):
        text = str(post.get(f"step.{key}", "") or "").strip()
        if text:
            step[key] = text
        else:
            step.pop(key, None)
    timeout = str(post.get("step.timeout_seconds", "") or "").strip()
    if timeout:
        number = _read_number(timeout, integer=False)
        if number is None:
            errors["timeout_seconds"] = ["enter a number"]
        else:
            step["timeout_seconds"] = number
    else:
        step.pop("timeout_seconds", None)
    retry = dict(previous.get("retry") or {}) if isinstance(previous.get("retry"), dict) else {}
    for key, integer in (("max_attempts", True), ("delay_seconds", False)):
        text = str(post.get(f"retry.{key}", "") or "").strip()
        if not text:
            retry.pop(key, None)
            continue
        number = _read_number(text, integer=integer)
        if number is None:
            errors[f"retry/{key}"] = ["enter a whole number" if integer else "enter a number"]
        else:
            retry[key] = number
    backoff = str(post.get("retry.backoff", "") or "").strip()
    if backoff:
        retry["backoff"] = backoff
    else:
        retry.pop("backoff", None)
    codes = [c.strip() for c in str(post.get("retry.retry_on", "") or "").split(",") if c.strip()]
    if codes:
        retry["retry_on"] = codes
    else:
        retry.pop("retry_on", None)
    if retry:
        step["retry"] = retry
    else:
        step.pop("retry", None)
    config, config_errors = parse_config(
        str(previous.get("kind", "")), post, previous.get("config")
    )
    step["config"] = config
    errors.update({f"config/{k}": v for k, v in config_errors.items()})
    return step, errors


# --- problems on fields ----------------------------------------------------------------------
REQUIRED = re.compile(r"^'(.+?)' is a required property$")
UNEXPECTED = re.compile(r"\('(.+?)' (?:was|were) unexpected\)")


def field_problems(problems: list[Problem], prefix: str) -> tuple[dict[str, list[str]], list[str]]:
    """Problems under `prefix` (e.g. "/steps/2") keyed by the field they concern, relative to
    the prefix ("id", "config/url", "retry/max_attempts"), and those that concern no field."""
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for problem in problems:
        if problem.path != prefix and not problem.path.startswith(prefix + "/"):
            continue
        rest = [
            p.replace("~1", "/").replace("~0", "~")
            for p in problem.path[len(prefix) :].strip("/").split("/")
            if p
        ]
        if rest[:1] == ["config"]:
            if len(rest) >= 2:
                deeper = "/".join(rest[2:])
                by_field.setdefault(f"config/{rest[1]}", []).append(
                    f"{deeper}: {problem.message}" if deeper else problem.message
                )
            elif m := REQUIRED.match(problem.message):
                by_field.setdefault(f"config/{m.group(1)}", []).append("required")
            elif m := UNEXPECTED.search(problem.message):
                for key in re.findall(r"'(.+?)'", m.group(0)):
                    by_field.setdefault(f"config/{key}", []).append("not a setting of this kind")
            else:
                general.append(problem.message)
        elif rest[:1] == ["retry"] and len(rest) >= 2:
            by_field.setdefault(f"retry/{rest[1]}", []).append(problem.message)
        elif len(rest) == 1 and rest[0] in (
            "id",
            "name",
            "join",
            "timeout_seconds",
            "retry",
            "event",
            "filter",
            "webhook",
            "schedule",
            "timezone",
            "manual",
            "kind",
        ):
            by_field.setdefault(rest[0], []).append(problem.message)
        elif not rest and (m := REQUIRED.match(problem.message)):
            by_field.setdefault(m.group(1), []).append("required")
        else:
            where = "/".join(rest)
            general.append(f"{where}: {problem.message}" if where else problem.message)
    return by_field, general


def config_errors(by_field: Mapping[str, list[str]]) -> dict[str, list[str]]:
    return {k.split("/", 1)[1]: v for k, v in by_field.items() if k.startswith("config/")}


def check_field(text: str, mode: str) -> list[str]:
    """Errors of one field as typed: a CEL expression, or a string with {{ … }} templates."""
    if mode == "expression":
        if not text.strip():
            return []
        try:
            expressions.check(text)
        except expressions.ExpressionError as exc:
            return [exc.message]
        return []
    if mode == "template":
        return [message for _path, message in expressions.check_templates(text)]
    return []


# --- triggers --------------------------------------------------------------------------------
# The fields of each trigger kind (a manual trigger has none); the first is the one that
# names the kind, kept in the trigger even when left empty.
TRIGGER_FIELDS = {
    "event": (
        FixedField(
            "trigger.event",
            "Event type",
            required=True,
            datalist="known-event-types",
            placeholder="com.example.order.placed",
            help="the CloudEvents type that starts a run",
        ),
        FixedField(
            "trigger.filter",
            "Filter",
            "expression",
            check="expression",
            placeholder="event.data.total > 0",
            help="CEL over event; the run starts only when it is true (optional)",
        ),
    ),
    "webhook": (
        FixedField(
            "trigger.webhook",
            "Webhook",
            required=True,
            datalist="known-webhooks",
            help="the slug of a webhook (python manage.py webhooks create SLUG --type TYPE)",
        ),
    ),
    "schedule": (
        FixedField(
            "trigger.schedule",
            "Schedule",
            required=True,
            placeholder="*/5 * * * *",
            help="5-field cron, an alias such as @daily, or @every 30s",
        ),
        FixedField("trigger.timezone", "Time zone", placeholder="UTC"),
    ),
}


def trigger_fields(trigger: Any, errors: Mapping[str, list[str]]) -> list[FormField]:
    trigger = trigger if isinstance(trigger, dict) else {}
    specs = TRIGGER_FIELDS.get(trigger_kind(trigger), ())
    return [spec.form_field(trigger, errors) for spec in specs]


def parse_trigger(trigger: Any, post: Mapping[str, Any]) -> dict[str, Any]:
    """The trigger a submitted form describes; its position (not in the form) is kept."""
    kind = trigger_kind(trigger)
    out: dict[str, Any] = {}
    if kind == "manual":
        out["manual"] = True
    for spec in TRIGGER_FIELDS.get(kind, ()):
        key = spec.name.removeprefix("trigger.")
        text = str(post.get(spec.name, "") or "").strip()
        if text or key == kind:
            out[key] = text
    if isinstance(trigger, dict) and "position" in trigger:
        out["position"] = trigger["position"]
    return out


def trigger_title(trigger: Any) -> str:
    return describe_trigger(trigger)


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


def _predecessors(raw: Mapping[str, Any]) -> dict[str, set[str]]:
    before: dict[str, set[str]] = {}
    for step in raw.get("steps") or []:
        if isinstance(step, dict) and isinstance(step.get("id"), str):
            before.setdefault(step["id"], set()).update(
                a for a in step.get("after") or [] if isinstance(a, str)
            )
    for edge in raw.get("edges") or []:
        if (
            isinstance(edge, dict)
            and isinstance(edge.get("to"), str)
            and isinstance(edge.get("from"), str)
        ):
            before.setdefault(edge["to"], set()).add(edge["from"])
    return before


def upstream_steps(raw: Mapping[str, Any], step_id: str) -> list[str]:
    """Every step that can have finished before `step_id` starts, in definition order."""
    before = _predecessors(raw)
    seen: set[str] = set()
    todo = list(before.get(step_id, ()))
    while todo:
        current = todo.pop()
        if current in seen or current == step_id:
            continue
        seen.add(current)
        todo.extend(before.get(current, ()))
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
