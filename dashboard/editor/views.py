"""The visual workflow editor: the canvas page and the server-rendered panels around it.

The browser holds the definition being edited (static/js/editor.js) and sends it whole:
to autosave it as the draft, and with every panel request (`definition`), so a panel is
always rendered from what is on the canvas. Panels are htmx partials; forms answer with
out-of-band fragments (field errors) and an `HX-Trigger` event carrying what the canvas
should apply, so the page never reloads and the canvas stays the one writer of the draft.

Two pages may edit the same draft. The page knows the draft revision it holds
(`draftRevision`) and sends it with every write: autosave as `baseRevision` in its JSON
body, the htmx panels that write the draft (publish, try, restore, import) as the
`X-Draft-Revision` header. A write based on an older revision is refused with 409 (JSON
problem details for autosave; for a panel, the panel saying who saved last and when, and an
`editor:conflict` event) and the page offers to reload or to overwrite (`force`).

This module holds the pages, autosave and the URLs; the panels live beside it, one module
per concern: editor_node_views (step, trigger, settings forms), editor_version_views
(versions, diff, restore, publish), editor_run_views (try it, runs), editor_code_views
(export, import), with editor_requests for what they all read from a request.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods

from dashboard.access import role_required
from dashboard.editor import palette as palettes
from dashboard.editor.code_views import code, export, import_file, import_upload
from dashboard.editor.node_views import (
    check,
    settings_apply,
    settings_panel,
    step_apply,
    step_panel,
    trigger_apply,
    trigger_panel,
)
from dashboard.editor.request_context import (
    MAX_DEFINITION_BYTES,
    draft_state,
    username,
    workflow_for,
)
from dashboard.editor.run_views import run_step, runs, try_it
from dashboard.editor.version_views import diff, publish, restore, versions
from workflows.access.roles import role_of
from workflows.api.bodies import BodyTooLarge, read_limited
from workflows.api.problems import problem as problem_details
from workflows.authoring import drafts
from workflows.authoring.definition_files import UnreadableDefinition
from workflows.catalog.models import Workflow
from workflows.core.definition import InvalidDefinition
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.events.models import EventType, Webhook


# --- pages ---------------------------------------------------------------------------------
@role_required("editor")
@require_http_methods(["GET", "POST"])
def new_workflow(request):
    """Start a workflow on an empty canvas, or from a definition file."""
    teams = _teams_for(request.user)
    context: dict[str, Any] = {"teams": teams, "values": request.POST, "errors": [], "problems": []}
    if request.method == "POST":
        slug = request.POST.get("slug", "").strip()
        team = next((t for t in teams if str(t.pk) == request.POST.get("team")), None)
        upload = request.FILES.get("file")
        try:
            if upload is not None:
                if Workflow.objects.filter(slug=slug).exists():
                    raise drafts.DraftRefused(
                        f"a workflow {slug!r} already exists; open it "
                        f"and import there to replace its draft"
                    )
                result = import_upload(request, slug, upload, new=True)
                if team is not None:
                    result.workflow.team = team
                    result.workflow.save(update_fields=["team"])
            else:
                drafts.create_workflow(
                    slug=slug, name=request.POST.get("name", ""), by=username(request), team=team
                )
        except (drafts.DraftRefused, UnreadableDefinition) as exc:
            context["errors"] = [str(exc)]
        except InvalidDefinition as exc:
            context["problems"] = exc.problems
        else:
            return redirect("dashboard:editor", slug=slug)
    return render(request, "dashboard/editor_new.html", context)


def _teams_for(user) -> list[Group]:
    """Groups that are not roles: the teams a workflow can belong to (admins: every team)."""
    from workflows.access.roles import ROLES

    groups = Group.objects.exclude(name__in=ROLES).order_by("name")
    if role_of(user) != "admin":
        groups = groups.filter(user=user)
    return list(groups)


@role_required("viewer")
@require_GET
def editor(request, slug: str):
    workflow = workflow_for(request, slug)
    can_edit = drafts.may_edit(request.user, workflow)
    draft = workflow.draft if isinstance(workflow.draft, dict) else {}
    problems = drafts.check_draft(draft)
    palette = palettes.palette()
    base = reverse("dashboard:editor", kwargs={"slug": slug})
    config = {
        "slug": slug,
        "canEdit": can_edit,
        "draft": draft,
        "problems": [p.as_dict() for p in problems],
        "nodes": drafts.node_problems(draft, problems).as_json(),
        "ports": {str(i): drafts.ports_of(s) for i, s in enumerate(draft.get("steps") or [])},
        "kinds": {k["kind"]: k for g in palette["groups"] for k in g["kinds"]},
        "triggerKinds": {t["kind"]: t for t in palette["triggers"]},
        "urls": {name: base + suffix for name, suffix in URL_SUFFIXES.items()},
        "csrf": get_token(request),
        "publishedVersion": (
            workflow.published_version.number if workflow.published_version else None
        ),
        "savedBy": workflow.draft_updated_by,
        "savedAt": workflow.updated_at.isoformat(),
        "draftRevision": workflow.draft_revision,
    }
    return render(
        request,
        "dashboard/editor.html",
        {
            "workflow": workflow,
            "can_edit": can_edit,
            "palette": palette,
            "editor_config": config,
            "known_event_types": EventType.objects.order_by("name").values_list("name", flat=True),
            "known_webhooks": Webhook.objects.order_by("slug").values_list("slug", flat=True),
        },
    )


# --- autosave ------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
def draft(request, slug: str):
    """GET: the stored draft (what Reload shows after a conflict); POST: autosave."""
    return current_draft(request, slug) if request.method == "GET" else save(request, slug)


@role_required("viewer")
def current_draft(request, slug: str):
    workflow = workflow_for(request, slug)
    raw = workflow.draft if isinstance(workflow.draft, dict) else {}
    problems = drafts.check_draft(raw)
    return JsonResponse(
        {
            "definition": raw,
            **draft_state(workflow),
            "problems": [p.as_dict() for p in problems],
            "nodes": drafts.node_problems(raw, problems).as_json(),
        }
    )


@role_required("editor")
def save(request, slug: str):
    """Store the canvas as the draft, valid or not; answer with its problems per node.

    The body is {"definition", "revision" (the page's own edit counter, echoed),
    "baseRevision" (the draft revision the canvas holds), "force", "client"}. A base that
    is not the stored revision is refused with 409 unless `force`."""
    workflow = workflow_for(request, slug, edit=True)
    try:
        body = loads_json(read_limited(request, MAX_DEFINITION_BYTES))
    except BodyTooLarge as exc:
        return JsonResponse({"error": str(exc)}, status=413)
    except InvalidEvent as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if not isinstance(body, dict):
        body = {}
    raw = body.get("definition")
    base = body.get("baseRevision")
    if base is not None and (not isinstance(base, int) or isinstance(base, bool)):
        return JsonResponse({"error": "baseRevision is a revision number"}, status=400)
    try:
        problems = drafts.save_draft(
            workflow=workflow,
            raw=raw,
            by=username(request),
            base_revision=base,
            force=body.get("force") is True,
            client=str(body.get("client") or "")[:64],
        )
    except drafts.DraftRefused as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except drafts.DraftConflict as exc:
        return problem_details(
            409,
            "The draft was changed by someone else",
            f"{exc.message}. Reload to see their version, or save again with force to "
            "overwrite it.",
            kind="draft-conflict",
            **exc.as_dict(),
        )
    return JsonResponse(
        {
            "revision": body.get("revision"),
            "draftRevision": workflow.draft_revision,
            "savedAt": workflow.updated_at.isoformat(),
            "savedBy": workflow.draft_updated_by,
            "problems": [p.as_dict() for p in problems],
            "nodes": drafts.node_problems(raw, problems).as_json(),
            "ports": {str(i): drafts.ports_of(s) for i, s in enumerate(raw.get("steps") or [])},
        }
    )


URL_SUFFIXES = {
    "save": "draft",
    "step": "step",
    "stepApply": "step/apply",
    "trigger": "trigger",
    "triggerApply": "trigger/apply",
    "settings": "settings",
    "settingsApply": "settings/apply",
    "check": "check",
    "versions": "versions",
    "diff": "diff",
    "publish": "publish",
    "try": "try",
    "runs": "runs",
    "runStep": "runs/",
    "code": "code",
    "export": "export",
    "import": "import",
}

_EDIT = "workflows/<slug:slug>/edit/"
urlpatterns = [
    path("workflows/new/", new_workflow, name="workflow-new"),
    path(_EDIT, editor, name="editor"),
    path(_EDIT + "draft", draft, name="editor-save"),
    path(_EDIT + "step", step_panel, name="editor-step"),
    path(_EDIT + "step/apply", step_apply, name="editor-step-apply"),
    path(_EDIT + "trigger", trigger_panel, name="editor-trigger"),
    path(_EDIT + "trigger/apply", trigger_apply, name="editor-trigger-apply"),
    path(_EDIT + "settings", settings_panel, name="editor-settings"),
    path(_EDIT + "settings/apply", settings_apply, name="editor-settings-apply"),
    path(_EDIT + "check", check, name="editor-check"),
    path(_EDIT + "versions", versions, name="editor-versions"),
    path(_EDIT + "versions/<int:number>/restore", restore, name="editor-restore"),
    path(_EDIT + "diff", diff, name="editor-diff"),
    path(_EDIT + "publish", publish, name="editor-publish"),
    path(_EDIT + "try", try_it, name="editor-try"),
    path(_EDIT + "runs", runs, name="editor-runs"),
    path(_EDIT + "runs/<int:run_id>/<str:step_id>", run_step, name="editor-run-step"),
    path(_EDIT + "code", code, name="editor-code"),
    path(_EDIT + "export", export, name="editor-export"),
    path(_EDIT + "import", import_file, name="editor-import"),
]
