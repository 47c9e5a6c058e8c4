"""The editor's run panels: trying the draft with a sample event, the workflow's latest
runs, and a step's input and output in a run shown on the canvas."""

from __future__ import annotations

import json
from typing import Any

from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from dashboard.access import role_required
from dashboard.editor.request_context import (
    base_revision_of,
    client_of,
    conflict_panel,
    draft_written,
    posted_definition,
    username,
    workflow_for,
)
from workflows.authoring import drafts
from workflows.core.definition import InvalidDefinition
from workflows.events.envelope import InvalidEvent
from workflows.events.models import Event
from workflows.events.schemas import SchemaViolation
from workflows.queries import runs as selectors
from workflows.queries.dashboard import hidden_workflow_ids
from workflows.runs.models import Run


# --- try it --------------------------------------------------------------------------------
@role_required("editor")
@require_http_methods(["GET", "POST"])
def try_it(request, slug: str):
    workflow = workflow_for(request, slug, edit=True)
    raw = posted_definition(request, workflow) if request.method == "POST" else workflow.draft
    context: dict[str, Any] = {
        "workflow": workflow,
        "samples": drafts.recent_samples(
            slug=slug, raw=raw, hidden=hidden_workflow_ids(request.user)
        ),
        "types": drafts.trigger_event_types(slug=slug, raw=raw),
        "values": request.POST,
        "errors": [],
    }
    if request.method == "GET":
        return render(request, "dashboard/_editor_try.html", context)
    sample = request.POST.get("sample", "typed")
    kwargs: dict[str, Any] = {}
    if sample != "typed":
        try:
            kwargs["event_id"] = int(sample)
        except ValueError:
            context["errors"] = ["pick an event or type one"]
    else:
        text = request.POST.get("data", "").strip()
        try:
            kwargs["data"] = json.loads(text) if text else None
        except ValueError as exc:
            context["errors"] = [f"the data is not valid JSON: {exc}"]
        kwargs["event_type"] = request.POST.get("type", "").strip()
    if context["errors"]:
        return render(request, "dashboard/_editor_try.html", context)
    try:
        run = drafts.try_draft(
            workflow=workflow,
            by=username(request),
            raw=raw,
            base_revision=base_revision_of(request),
            client=client_of(request),
            hidden=hidden_workflow_ids(request.user),
            **kwargs,
        )
    except drafts.DraftConflict as exc:
        return conflict_panel(request, "dashboard/_editor_try.html", context, exc)
    except drafts.DraftRefused as exc:
        context["errors"] = [str(exc)]
    except InvalidDefinition as exc:
        context["problems"] = exc.problems
    except Event.DoesNotExist:
        context["errors"] = ["that event is no longer stored"]
    except InvalidEvent as exc:
        context["errors"] = [f"not a valid event: {exc}"]
    except SchemaViolation as exc:
        context["errors"] = [f"the data breaks the type's schema: {exc}"]
    else:
        context["run"] = run
        run_url = reverse("dashboard:run", args=[run.pk])
        return draft_written(
            request,
            "dashboard/_editor_try.html",
            context,
            workflow,
            # The run page is where a run is watched: the editor goes there at once.
            {"editor:show-run": {"run": run.pk, "origin": "try", "url": run_url}},
        )
    return draft_written(request, "dashboard/_editor_try.html", context, workflow)


# --- runs on the canvas --------------------------------------------------------------------
@role_required("viewer")
@require_GET
def runs(request, slug: str):
    workflow = workflow_for(request, slug)
    return render(
        request,
        "dashboard/_editor_runs.html",
        {
            "workflow": workflow,
            "runs": selectors.runs(workflow_slug=slug, limit=20),
        },
    )


@role_required("viewer")
@require_GET
def run_step(request, slug: str, run_id: int, step_id: str):
    workflow = workflow_for(request, slug)
    run = get_object_or_404(
        Run.objects.select_related("version", "event"), pk=run_id, workflow=workflow
    )
    attempts = list(run.steps.filter(step_id=step_id).order_by("attempt", "id"))
    return render(
        request,
        "dashboard/_editor_run_step.html",
        {
            "workflow": workflow,
            "run": run,
            "step_id": step_id,
            "latest": attempts[-1] if attempts else None,
            "attempts": attempts,
        },
    )
