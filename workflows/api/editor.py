"""The editor's operations over the API: drafts that may be invalid, versions, diffs,
restoring, trying a draft, and definitions as files (export/import).

GET   /workflows/<slug>/export            ?format=json|yaml&version=<n>   (viewer)
POST  /workflows/<slug>/import            ?publish=true&note=…  body: JSON or YAML (editor)
PUT   /workflows/<slug>/draft             store a draft even if invalid; answers its problems
GET   /workflows/<slug>/versions          published versions, newest first           (viewer)
GET   /workflows/<slug>/diff              ?from=<n>|draft&to=<n>|draft                (viewer)
POST  /workflows/<slug>/versions/<n>/restore   copy a version into the draft          (editor)
POST  /workflows/<slug>/try               {"event": <id>} or {"data": …, "type": "…"} (editor)

An import is all or nothing: an unreadable or invalid file is refused (400, every problem
with its JSON pointer) and nothing changes; with ?publish=true a publish that is refused
takes the new draft back with it.
"""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_http_methods

from ..definition import InvalidDefinition
from ..definition_files import YAML_TYPES, UnreadableDefinition, load_definition_text
from ..events.envelope import InvalidEvent, loads_json
from ..models import Event, Workflow, WorkflowVersion
from ..services import drafts
from ..services.schemas import SchemaViolation
from .auth import token_required
from .bodies import BodyTooLarge, media_type, read_limited
from .problems import problem

MAX_DEFINITION_BYTES = 1024 * 1024


def _actor(request) -> str:
    return f"token:{request.api_token.name}"


def _found(slug: str) -> Workflow | None:
    return Workflow.objects.select_related("published_version").filter(slug=slug).first()


def _not_found(slug: str):
    return problem(404, "No such workflow", slug, kind="not-found")


def _invalid(exc: InvalidDefinition):
    errors = [p.as_dict() for p in exc.problems]
    return problem(
        400,
        "Invalid workflow definition",
        f"{len(errors)} problem(s) in the definition",
        kind="invalid-definition",
        errors=errors,
    )


def _version_json(version: WorkflowVersion, live: int | None) -> dict:
    return {
        "number": version.number,
        "note": version.note,
        "published_by": version.published_by,
        "created_at": version.created_at.isoformat(),
        "live": version.number == live,
    }


@require_http_methods(["GET"])
@token_required("viewer")
def export(request, slug: str):
    workflow = _found(slug)
    if workflow is None:
        return _not_found(slug)
    fmt = request.GET.get("format", "json")
    if fmt not in ("json", "yaml"):
        return problem(400, "Invalid query", "format is json or yaml", kind="invalid-query")
    try:
        version = int(request.GET["version"]) if request.GET.get("version") else None
        filename, text = drafts.export_definition(
            workflow=workflow, yaml_format=fmt == "yaml", version=version
        )
    except ValueError:
        return problem(400, "Invalid query", "version is a number", kind="invalid-query")
    except WorkflowVersion.DoesNotExist:
        return problem(404, "No such version", request.GET["version"], kind="not-found")
    response = HttpResponse(
        text,
        content_type=("application/yaml" if fmt == "yaml" else "application/json")
        + "; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_http_methods(["POST"])
@token_required("editor")
def import_(request, slug: str):
    publish = request.GET.get("publish", "").lower() in ("1", "true", "yes")
    try:
        body = read_limited(request, MAX_DEFINITION_BYTES)
        result = drafts.import_definition(
            slug=slug,
            body=body,
            yaml_format=media_type(request) in YAML_TYPES,
            by=_actor(request),
            publish=publish,
            note=request.GET.get("note", ""),
        )
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except UnreadableDefinition as exc:
        return problem(400, "Unreadable definition", str(exc), kind="invalid-json")
    except drafts.DraftRefused as exc:
        return problem(400, "Invalid slug", str(exc), kind="invalid-slug")
    except InvalidDefinition as exc:
        return _invalid(exc)
    workflow = result.workflow
    return JsonResponse(
        {
            "slug": workflow.slug,
            "name": workflow.name,
            "draft": workflow.draft,
            "published_version": workflow.published_version.number
            if workflow.published_version
            else None,
            "created": result.created,
        },
        status=201 if result.created else 200,
    )


@require_http_methods(["PUT"])
@token_required("editor")
def draft(request, slug: str):
    """Store a draft whether or not it is valid (what an editor saves as it goes)."""
    try:
        raw = load_definition_text(
            read_limited(request, MAX_DEFINITION_BYTES),
            yaml_format=media_type(request) in YAML_TYPES,
        )
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except UnreadableDefinition as exc:
        return problem(400, "Unreadable definition", str(exc), kind="invalid-json")
    workflow = _found(slug)
    created = workflow is None
    try:
        if created:
            name = raw.get("name") if isinstance(raw, dict) else ""
            workflow = drafts.create_workflow(slug=slug, name=str(name or slug), by=_actor(request))
        problems = drafts.save_draft(workflow=workflow, raw=raw, by=_actor(request))
    except drafts.DraftRefused as exc:
        if created and workflow is not None:
            workflow.delete()
        return problem(400, "Draft refused", str(exc), kind="draft-refused")
    return JsonResponse(
        {
            "slug": slug,
            "valid": not problems,
            "problems": [p.as_dict() for p in problems],
            "updated_at": workflow.updated_at.isoformat(),
        },
        status=201 if created else 200,
    )


@require_http_methods(["GET"])
@token_required("viewer")
def versions(request, slug: str):
    workflow = _found(slug)
    if workflow is None:
        return _not_found(slug)
    live = workflow.published_version.number if workflow.published_version else None
    return JsonResponse(
        {
            "workflow": slug,
            "versions": [_version_json(v, live) for v in drafts.published_versions(workflow)],
        }
    )


@require_http_methods(["GET"])
@token_required("viewer")
def diff(request, slug: str):
    workflow = _found(slug)
    if workflow is None:
        return _not_found(slug)
    refs = (request.GET.get("from", ""), request.GET.get("to", "draft"))
    if not refs[0]:
        return problem(
            400, "Invalid query", "from is a version number or draft", kind="invalid-query"
        )
    try:
        before, after = (drafts.definition_at(workflow, ref) for ref in refs)
    except ValueError:
        return problem(
            400, "Invalid query", "from and to are version numbers or draft", kind="invalid-query"
        )
    except WorkflowVersion.DoesNotExist:
        return problem(404, "No such version", f"{refs[0]} or {refs[1]}", kind="not-found")
    return JsonResponse(
        {"workflow": slug, "from": refs[0], "to": refs[1], **drafts.diff_definitions(before, after)}
    )


@require_http_methods(["POST"])
@token_required("editor")
def restore(request, slug: str, number: int):
    workflow = _found(slug)
    if workflow is None:
        return _not_found(slug)
    try:
        restored = drafts.restore_version(workflow=workflow, number=number, by=_actor(request))
    except WorkflowVersion.DoesNotExist:
        return problem(404, "No such version", str(number), kind="not-found")
    return JsonResponse({"workflow": slug, "restored": number, "draft": restored})


@require_http_methods(["POST"])
@token_required("editor")
def try_(request, slug: str):
    workflow = _found(slug)
    if workflow is None:
        return _not_found(slug)
    try:
        body = loads_json(read_limited(request, MAX_DEFINITION_BYTES)) if request.body else {}
    except (BodyTooLarge, InvalidEvent) as exc:
        return problem(400, "Invalid body", str(exc), kind="invalid-body")
    if not isinstance(body, dict) or ("event" in body) == ("data" in body):
        return problem(
            400,
            "Invalid body",
            'send {"event": <stored event id>} or {"data": ..., "type": "..."}',
            kind="invalid-body",
        )
    kwargs: dict = {}
    if "event" in body:
        if not isinstance(body["event"], int):
            return problem(400, "Invalid body", "event is a stored event's id", kind="invalid-body")
        kwargs["event_id"] = body["event"]
    else:
        kwargs["data"] = body["data"]
        kwargs["event_type"] = str(body.get("type") or "")
    try:
        run = drafts.try_draft(workflow=workflow, by=_actor(request), **kwargs)
    except InvalidDefinition as exc:
        return _invalid(exc)
    except Event.DoesNotExist:
        return problem(404, "No such event", str(body.get("event")), kind="not-found")
    except InvalidEvent as exc:
        return problem(400, "Invalid event", str(exc), kind="invalid-event", errors=exc.problems)
    except SchemaViolation as exc:
        return problem(
            422,
            "Event data does not match its schema",
            str(exc),
            kind="schema-violation",
            errors=exc.errors,
        )
    return JsonResponse(
        {
            "run": run.pk,
            "workflow": slug,
            "snapshot": run.version_id,
            "event": run.event_id,
            "status": run.status,
        },
        status=202,
    )


urlpatterns = [
    path("workflows/<slug:slug>/export", export, name="api-workflow-export"),
    path("workflows/<slug:slug>/import", import_, name="api-workflow-import"),
    path("workflows/<slug:slug>/draft", draft, name="api-workflow-draft"),
    path("workflows/<slug:slug>/versions", versions, name="api-workflow-versions"),
    path("workflows/<slug:slug>/diff", diff, name="api-workflow-diff"),
    path(
        "workflows/<slug:slug>/versions/<int:number>/restore", restore, name="api-workflow-restore"
    ),
    path("workflows/<slug:slug>/try", try_, name="api-workflow-try"),
]
