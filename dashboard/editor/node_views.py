"""The editor's node panels: a step's and a trigger's config forms, the workflow's own
settings, and expressions checked as they are typed. Each form answers with the changed
node in an `editor:apply` event that the canvas applies like any other edit."""

from __future__ import annotations

import copy
import json
from typing import Any

from django.shortcuts import render
from django.views.decorators.http import require_POST

from dashboard.access import role_required
from dashboard.editor import fields as fields
from dashboard.editor import forms as forms
from dashboard.editor import palette as palettes
from dashboard.editor import variables as variables
from dashboard.editor.request_context import (
    node_index,
    posted_definition,
    with_trigger,
    workflow_for,
)
from workflows.authoring import drafts
from workflows.authoring.definitions import manual_event_type
from workflows.catalog.models import Workflow
from workflows.steps import registry


# --- the step panel --------------------------------------------------------------------------
def _step_context(
    workflow: Workflow,
    raw: dict,
    index: int,
    *,
    can_edit: bool,
    parse_errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    steps = raw.get("steps") or []
    step = steps[index] if isinstance(steps[index], dict) else {}
    problems = drafts.check_draft(raw)
    by_field, general = forms.field_problems(problems, f"/steps/{index}")
    for key, messages in (parse_errors or {}).items():
        by_field[key] = messages + by_field.get(key, [])
    kind = registry.all_kinds().get(step.get("kind"))
    return {
        "workflow": workflow,
        "index": index,
        "step": step,
        "kind": kind,
        "icon": palettes.icon_svg(kind.icon if kind else ""),
        "step_fields": forms.step_fields(step, by_field),
        "config_fields": fields.config_fields(
            str(step.get("kind")), step.get("config"), forms.config_errors(by_field)
        ),
        "general": general,
        "ports": drafts.ports_of(step),
        "variables": variables.step_variables(workflow.slug, raw, index),
        "can_edit": can_edit,
    }


@role_required("viewer")
@require_POST
def step_panel(request, slug: str):
    workflow = workflow_for(request, slug)
    raw = posted_definition(request, workflow)
    index = node_index(request, raw.get("steps") or [])
    context = _step_context(workflow, raw, index, can_edit=drafts.may_edit(request.user, workflow))
    return render(request, "dashboard/_editor_step.html", context)


@role_required("editor")
@require_POST
def step_apply(request, slug: str):
    """Read the step form: answer with its field errors (out of band) and, in HX-Trigger,
    the step as the canvas should now hold it."""
    workflow = workflow_for(request, slug, edit=True)
    raw = posted_definition(request, workflow)
    steps = raw.get("steps") or []
    index = node_index(request, steps)
    previous = steps[index] if isinstance(steps[index], dict) else {}
    others = {s.get("id") for i, s in enumerate(steps) if i != index and isinstance(s, dict)}
    step, parse_errors = forms.parse_step(request.POST, previous, others)
    updated = copy.deepcopy(raw)
    updated["steps"][index] = step
    renamed = None
    if step.get("id") != previous.get("id"):
        renamed = [previous.get("id"), step.get("id")]
        _rename(updated, *renamed)
    context = _step_context(workflow, updated, index, can_edit=True, parse_errors=parse_errors)
    response = render(request, "dashboard/_editor_apply.html", context)
    return with_trigger(
        response,
        "editor:apply",
        {
            "what": "step",
            "index": index,
            "id": previous.get("id"),
            "step": step,
            "renamed": renamed,
        },
    )


def _rename(raw: dict, old: str, new: str) -> None:
    for step in raw.get("steps") or []:
        if isinstance(step, dict) and isinstance(step.get("after"), list):
            step["after"] = [new if a == old else a for a in step["after"]]
    for edge in raw.get("edges") or []:
        if isinstance(edge, dict):
            for end in ("from", "to"):
                if edge.get(end) == old:
                    edge[end] = new


# --- the trigger panel ---------------------------------------------------------------------
def _trigger_context(workflow: Workflow, raw: dict, index: int, *, can_edit: bool):
    trigger = (raw.get("triggers") or [])[index]
    problems = drafts.check_draft(raw)
    by_field, general = forms.field_problems(problems, f"/triggers/{index}")
    kind = palettes.trigger_kind(trigger)
    return {
        "workflow": workflow,
        "index": index,
        "trigger": trigger,
        "trigger_kind": next(t for t in palettes.TRIGGER_KINDS if t["kind"] == kind),
        "icon": palettes.icon_svg(
            next(t["icon"] for t in palettes.TRIGGER_KINDS if t["kind"] == kind)
        ),
        "fields": forms.trigger_fields(trigger, by_field),
        "general": general,
        "variables": variables.event_variables(workflow.slug, raw, only_trigger=index),
        "manual_type": manual_event_type(workflow.slug),
        "can_edit": can_edit,
    }


@role_required("viewer")
@require_POST
def trigger_panel(request, slug: str):
    workflow = workflow_for(request, slug)
    raw = posted_definition(request, workflow)
    index = node_index(request, raw.get("triggers") or [])
    return render(
        request,
        "dashboard/_editor_trigger.html",
        _trigger_context(workflow, raw, index, can_edit=drafts.may_edit(request.user, workflow)),
    )


@role_required("editor")
@require_POST
def trigger_apply(request, slug: str):
    workflow = workflow_for(request, slug, edit=True)
    raw = posted_definition(request, workflow)
    triggers = raw.get("triggers") or []
    index = node_index(request, triggers)
    trigger = forms.parse_trigger(triggers[index], request.POST)
    updated = copy.deepcopy(raw)
    updated["triggers"][index] = trigger
    context = _trigger_context(workflow, updated, index, can_edit=True)
    context["config_fields"], context["step_fields"] = context["fields"], []
    response = render(request, "dashboard/_editor_apply.html", context)
    return with_trigger(
        response, "editor:apply", {"what": "trigger", "index": index, "trigger": trigger}
    )


# --- the workflow's own settings -----------------------------------------------------------
def _settings_fields(raw: dict, by_field: dict[str, list[str]]) -> list[fields.FormField]:
    concurrency = raw.get("concurrency") if isinstance(raw.get("concurrency"), dict) else {}
    return [
        fields.FormField(
            name="workflow.name",
            label="Name",
            widget="text",
            required=True,
            value=str(raw.get("name", "")),
            errors=by_field.get("name", []),
        ),
        fields.FormField(
            name="workflow.description",
            label="Description",
            widget="textarea",
            value=str(raw.get("description", "") or ""),
            errors=by_field.get("description", []),
        ),
        fields.FormField(
            name="workflow.vars",
            label="Vars (JSON object)",
            widget="json",
            value=(json.dumps(raw["vars"], indent=2, ensure_ascii=False) if "vars" in raw else ""),
            help="constants that expressions read as vars.<name>",
            errors=by_field.get("vars", []),
        ),
        fields.FormField(
            name="workflow.max_runs",
            label="At most this many runs at once",
            widget="number",
            value=str(concurrency.get("max_runs", "") or ""),
            placeholder="no limit",
            errors=by_field.get("concurrency", []),
        ),
        fields.FormField(
            name="workflow.ordered",
            label="Runs of the same key one after another",
            widget="checkbox",
            checked=bool(concurrency.get("ordered")),
        ),
    ]


def _settings_problems(raw: dict, extra: dict[str, list[str]] | None = None):
    by_field: dict[str, list[str]] = {k: list(v) for k, v in (extra or {}).items()}
    for problem in drafts.check_draft(raw):
        parts = problem.path.strip("/").split("/")
        if parts[0] in ("name", "description", "vars", "concurrency"):
            by_field.setdefault(parts[0], []).append(problem.message)
    return by_field


@role_required("viewer")
@require_POST
def settings_panel(request, slug: str):
    workflow = workflow_for(request, slug)
    raw = posted_definition(request, workflow)
    return render(
        request,
        "dashboard/_editor_settings.html",
        {
            "workflow": workflow,
            "fields": _settings_fields(raw, _settings_problems(raw)),
            "can_edit": drafts.may_edit(request.user, workflow),
        },
    )


@role_required("editor")
@require_POST
def settings_apply(request, slug: str):
    workflow = workflow_for(request, slug, edit=True)
    raw = posted_definition(request, workflow)
    post = request.POST
    updated = copy.deepcopy(raw)
    errors: dict[str, list[str]] = {}
    updated["name"] = post.get("workflow.name", "")
    description = post.get("workflow.description", "")
    if description.strip():
        updated["description"] = description
    else:
        updated.pop("description", None)
    text = post.get("workflow.vars", "")
    if text.strip():
        try:
            updated["vars"] = json.loads(text)
        except ValueError as exc:
            errors["vars"] = [f"not valid JSON: {exc}"]
    else:
        updated.pop("vars", None)
    concurrency: dict[str, Any] = {}
    if post.get("workflow.max_runs", "").strip():
        try:
            concurrency["max_runs"] = int(post["workflow.max_runs"])
        except ValueError:
            errors["concurrency"] = ["enter a whole number"]
    if "workflow.ordered" in post:
        concurrency["ordered"] = True
    if concurrency:
        updated["concurrency"] = concurrency
    else:
        updated.pop("concurrency", None)
    fields = _settings_fields(updated, _settings_problems(updated, errors))
    response = render(
        request,
        "dashboard/_editor_apply.html",
        {"config_fields": fields, "step_fields": [], "general": []},
    )
    settings = {k: updated.get(k) for k in ("name", "description", "vars", "concurrency")}
    return with_trigger(response, "editor:apply", {"what": "workflow", "settings": settings})


# --- expressions as you type ---------------------------------------------------------------
@role_required("viewer")
@require_POST
def check(request, slug: str):
    """Check one field as typed: `field` names it, `mode` is "expression" or "template"."""
    workflow_for(request, slug)
    name = request.POST.get("field", "")
    errors = forms.check_field(request.POST.get(name, ""), request.POST.get("mode", ""))
    return render(
        request,
        "dashboard/_editor_check.html",
        {
            "errors": errors,
            "text": request.POST.get(name, ""),
            "mode": request.POST.get("mode"),
        },
    )
