"""The editor's node forms, server-side: a step's own fields (id, name, join, timeout, retry)
and its config read back from the form, problems placed on the fields they concern, and a
trigger's fields. Form fields from a kind's schema are in editor_fields."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dashboard.editor.fields import FixedField, FormField, parse_config, read_number
from dashboard.editor.palette import trigger_kind
from workflows.authoring.drafts import describe_trigger
from workflows.core import expressions
from workflows.core.definition import STEP_ID, Problem

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
        number = read_number(timeout, integer=False)
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
        number = read_number(text, integer=integer)
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
