"""The editor's version panels: published versions, the diff between two of them (or the
draft), restoring one into the draft, and publishing the draft."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

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
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.definition import InvalidDefinition, Problem


# --- versions, diff, restore ---------------------------------------------------------------
@role_required("viewer")
@require_GET
def versions(request, slug: str):
    workflow = workflow_for(request, slug)
    return render(request, "dashboard/_editor_versions.html", _versions_context(request, workflow))


def _versions_context(request, workflow: Workflow) -> dict[str, Any]:
    found = drafts.published_versions(workflow)
    return {
        "workflow": workflow,
        "versions": found,
        "can_edit": drafts.may_edit(request.user, workflow),
        "live": workflow.published_version.number if workflow.published_version else None,
        "default_from": found[1].number if len(found) > 1 else (found[0].number if found else ""),
        "default_to": found[0].number if len(found) > 1 else "draft",
    }


@role_required("viewer")
@require_GET
def diff(request, slug: str):
    workflow = workflow_for(request, slug)
    refs = (request.GET.get("from", ""), request.GET.get("to", "draft"))
    try:
        before, after = (drafts.definition_at(workflow, ref) for ref in refs)
    except (WorkflowVersion.DoesNotExist, ValueError) as exc:
        raise Http404("no such version") from exc
    return render(
        request,
        "dashboard/_editor_diff.html",
        {
            "workflow": workflow,
            "label_from": _label(refs[0]),
            "label_to": _label(refs[1]),
            "diff": drafts.diff_definitions(before, after),
        },
    )


def _label(ref: str) -> str:
    return "the draft" if ref in ("", "draft") else f"v{ref}"


@role_required("editor")
@require_POST
def restore(request, slug: str, number: int):
    workflow = workflow_for(request, slug, edit=True)
    try:
        draft = drafts.restore_version(
            workflow=workflow,
            number=number,
            by=username(request),
            base_revision=base_revision_of(request),
            client=client_of(request),
        )
    except WorkflowVersion.DoesNotExist as exc:
        raise Http404("no such version") from exc
    except drafts.DraftConflict as exc:
        return conflict_panel(
            request, "dashboard/_editor_versions.html", _versions_context(request, workflow), exc
        )
    problems = drafts.check_draft(draft)
    context = _versions_context(request, workflow)
    context["message"] = f"v{number} restored into the draft. Publish to make it live."
    return draft_written(
        request,
        "dashboard/_editor_versions.html",
        context,
        workflow,
        {
            "editor:reload": {
                "definition": draft,
                "message": context["message"],
                "problems": [p.as_dict() for p in problems],
                "nodes": drafts.node_problems(draft, problems).as_json(),
                "draftRevision": workflow.draft_revision,
            }
        },
    )


# --- publish -------------------------------------------------------------------------------
@role_required("viewer")
@require_http_methods(["GET", "POST"])
def publish(request, slug: str):
    workflow = workflow_for(request, slug, edit=request.method == "POST")
    context: dict[str, Any] = {
        "workflow": workflow,
        "can_edit": drafts.may_edit(request.user, workflow),
    }
    if request.method == "GET":
        return render(request, "dashboard/_editor_publish.html", context)
    raw = posted_definition(request, workflow)
    note = request.POST.get("note", "")
    try:
        version = drafts.publish_draft(
            workflow=workflow,
            by=username(request),
            note=note,
            raw=raw,
            base_revision=base_revision_of(request),
            client=client_of(request),
        )
    except drafts.DraftRefused as exc:
        context["problems"] = [Problem("/", str(exc))]
    except drafts.DraftConflict as exc:
        context["note"] = note
        return conflict_panel(request, "dashboard/_editor_publish.html", context, exc)
    except InvalidDefinition as exc:
        context["problems"] = exc.problems
        context["note"] = note
    else:
        context["published"] = version
        return draft_written(
            request,
            "dashboard/_editor_publish.html",
            context,
            workflow,
            {"editor:published": {"version": version.number}},
        )
    # An invalid draft is still stored: the page learns its new revision.
    return draft_written(request, "dashboard/_editor_publish.html", context, workflow)
