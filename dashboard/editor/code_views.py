"""The editor's definition-as-code panel: export the draft or a version as JSON or YAML,
import a file into the draft."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from dashboard.access import role_required
from dashboard.editor.request_context import (
    MAX_DEFINITION_BYTES,
    base_revision_of,
    client_of,
    conflict_panel,
    draft_written,
    username,
    workflow_for,
)
from workflows.authoring import drafts
from workflows.authoring.definition_files import UnreadableDefinition
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.definition import InvalidDefinition


# --- as code -------------------------------------------------------------------------------
@role_required("viewer")
@require_GET
def code(request, slug: str):
    workflow = workflow_for(request, slug)
    context = _code_context(workflow, can_edit=drafts.may_edit(request.user, workflow))
    return render(request, "dashboard/_editor_code.html", context)


def _code_context(workflow: Workflow, *, can_edit: bool) -> dict[str, Any]:
    return {
        "workflow": workflow,
        "can_edit": can_edit,
        "versions": drafts.published_versions(workflow),
    }


@role_required("viewer")
@require_GET
def export(request, slug: str):
    workflow = workflow_for(request, slug)
    version = request.GET.get("version") or None
    try:
        filename, text = drafts.export_definition(
            workflow=workflow,
            yaml_format=request.GET.get("format") == "yaml",
            version=int(version) if version else None,
        )
    except (WorkflowVersion.DoesNotExist, ValueError) as exc:
        raise Http404("no such version") from exc
    kind = "application/yaml" if filename.endswith(".yaml") else "application/json"
    response = HttpResponse(text, content_type=f"{kind}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def import_upload(request, slug: str, upload, *, new: bool) -> drafts.ImportResult:
    """Import an uploaded definition file (at most 1 MiB) as the draft of `slug`. A new
    workflow has no draft the page could hold an older revision of."""
    body = upload.read(MAX_DEFINITION_BYTES + 1)
    if len(body) > MAX_DEFINITION_BYTES:
        raise drafts.DraftRefused("the file is larger than 1 MiB")
    revision = (
        {} if new else {"base_revision": base_revision_of(request), "client": client_of(request)}
    )
    return drafts.import_definition(
        slug=slug,
        body=body,
        yaml_format=_is_yaml(upload.name, body),
        by=username(request),
        **revision,
    )


def _is_yaml(filename: str, body: bytes) -> bool:
    name = (filename or "").lower()
    if name.endswith((".yaml", ".yml")):
        return True
    if name.endswith(".json"):
        return False
    return body.lstrip()[:1] not in (b"{", b"[")


@role_required("editor")
@require_POST
def import_file(request, slug: str):
    """Replace the draft with an uploaded file: all of it, or nothing when it is invalid."""
    workflow = workflow_for(request, slug, edit=True)
    context = _code_context(workflow, can_edit=True)
    upload = request.FILES.get("file")
    if upload is None:
        context["import_errors"] = ["choose a JSON or YAML file"]
        return render(request, "dashboard/_editor_code.html", context)
    try:
        result = import_upload(request, slug, upload, new=False)
    except drafts.DraftConflict as exc:
        return conflict_panel(request, "dashboard/_editor_code.html", context, exc)
    except (drafts.DraftRefused, UnreadableDefinition) as exc:
        context["import_errors"] = [f"{upload.name}: {exc}"]
    except InvalidDefinition as exc:
        context["import_errors"] = [
            f"{upload.name}: {len(exc.problems)} problem(s); the draft was not changed"
        ]
        context["import_problems"] = exc.problems
    else:
        context["imported"] = upload.name
        return draft_written(
            request,
            "dashboard/_editor_code.html",
            context,
            result.workflow,
            {
                "editor:reload": {
                    "definition": result.workflow.draft,
                    "problems": [],
                    "nodes": {},
                    "message": f"{upload.name} imported into the draft",
                    "draftRevision": result.workflow.draft_revision,
                }
            },
        )
    return render(request, "dashboard/_editor_code.html", context)
