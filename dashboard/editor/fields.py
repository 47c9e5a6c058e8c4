"""Form fields from a step kind's JSON Schema (`config_schema`), the form data read back
into config, and the fixed fields every node shows (FixedField).

Plain functions over plain data (the definition as a dict); the views render the results."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workflows.steps import registry

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
            number = read_number(text, integer=prop.get("type") == "integer")
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


def read_number(text: str, *, integer: bool) -> int | float | None:
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
