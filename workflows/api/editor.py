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
takes the new draft back with it (422 `runs-would-fail` when every run would hit a
problem, as the editor refuses to publish it: workflows/authoring/preflight.py).

Every write of a draft bumps its revision, sent as the `ETag` (`"7"`) and as
`draft_revision`. A write may name the revision it is based on: `If-Match: "7"` (refused
with 412 when the draft is at another revision) or `?base_revision=7` (refused with 409).
Either way the refusal is a `draft-conflict` problem naming who saved last and when, and
nothing changes. Without either, the write replaces whatever is stored, as it always did.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_http_methods

from workflows.api.auth import hides_slug, token_required, visible_workflow
from workflows.api.bodies import UNSTORABLE_TEXT, BodyTooLarge, media_type, read_limited, storable
from workflows.api.problems import problem
from workflows.authoring import drafts
from workflows.authoring.definition_files import (
    YAML_TYPES,
    UnreadableDefinition,
    load_definition_text,
)
from workflows.authoring.definitions import RunsWouldFail, publish_runnable
from workflows.authoring.preflight import run_problems
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.definition import InvalidDefinition
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.events.models import Event
from workflows.events.schemas import SchemaViolation

MAX_DEFINITION_BYTES = 1024 * 1024


def _actor(request) -> str:
    return f"token:{request.api_token.name}"


# --- revisions: ETag, If-Match and base_revision ---------------------------------------------
class BadPrecondition(ValueError):
    pass


def etag(workflow: Workflow) -> str:
    return f'"{workflow.draft_revision}"'


def with_etag(response, workflow: Workflow):
    response["ETag"] = etag(workflow)
    return response


def precondition(request, body_revision: Any = None) -> tuple[int | None, bool]:
    """The draft revision a write is based on, and whether it came as `If-Match` (else from
    `?base_revision=` or the body). (None, …) means: write whatever is stored. Raises
    BadPrecondition for a malformed one."""
    header = request.headers.get("If-Match")
    if header is not None:
        tags = [t.strip() for t in header.split(",") if t.strip()]
        if tags == ["*"]:
            return None, True
        if len(tags) != 1:
            raise BadPrecondition('If-Match takes one ETag, like "7"')
        tag = tags[0].removeprefix("W/").strip('"')
        # An ETag that is not one of ours matches no revision: a conflict, not an error.
        return (int(tag) if tag.isdigit() else -1), True
    value = request.GET.get("base_revision", body_revision)
    if value is None or value == "":
        return None, False
    if isinstance(value, bool) or not str(value).isdigit():
        raise BadPrecondition("base_revision is a draft revision number")
    return int(value), False


def bad_precondition(exc: BadPrecondition):
    return problem(400, "Invalid precondition", str(exc), kind="invalid-precondition")


def no_revision(slug: str):
    """If-Match on a workflow that does not exist: nothing can match (RFC 9110)."""
    return problem(
        412, "Precondition failed", f"no workflow {slug!r} to match", kind="precondition-failed"
    )


class Refused(Exception):
    """A write refused with `response` (a problem)."""

    def __init__(self, response) -> None:
        super().__init__(response.status_code)
        self.response = response


def put_definition(request, *, slug: str, raw: Any) -> tuple[Workflow, bool]:
    """PUT /workflows/<slug>: create the workflow or replace its draft with a valid
    definition, under the request's precondition if it has one. Raises InvalidDefinition,
    or Refused with the answer."""
    try:
        base, if_match = precondition(request)
    except BadPrecondition as exc:
        raise Refused(bad_precondition(exc)) from exc
    if if_match and not Workflow.objects.filter(slug=slug).exists():
        raise Refused(no_revision(slug))
    try:
        return drafts.replace_draft(
            slug=slug,
            raw=raw,
            by=_actor(request),
            base_revision=base,
            team=request.api_token.team,
        )
    except drafts.DraftConflict as exc:
        raise Refused(conflict(exc, if_match=if_match)) from exc


def publish_seen(request, *, slug: str, note: str, published_by: str) -> WorkflowVersion:
    """POST /workflows/<slug>/publish: publish the draft, refused (Refused) when the
    request names a revision (If-Match, or `base_revision` in its body) that is not the
    draft's: nobody publishes a draft they have not seen. Raises InvalidDefinition, or
    RunsWouldFail for a well-formed draft that every run would trip over."""
    try:
        body = loads_json(request.body) if request.body else {}
    except InvalidEvent:
        body = {}
    try:
        base, if_match = precondition(
            request, body.get("base_revision") if isinstance(body, dict) else None
        )
    except BadPrecondition as exc:
        raise Refused(bad_precondition(exc)) from exc
    try:
        with transaction.atomic():
            if base is not None:
                drafts.expect_revision(slug=slug, base_revision=base)
            # Refused as the editor refuses it: RunsWouldFail (preflight) answers 422.
            return publish_runnable(slug=slug, note=note, published_by=published_by)
    except drafts.DraftConflict as exc:
        raise Refused(conflict(exc, if_match=if_match)) from exc


def conflict(exc: drafts.DraftConflict, *, if_match: bool):
    response = problem(
        412 if if_match else 409,
        "The draft was changed by someone else",
        f"{exc.message}. GET the workflow for the current draft and its revision (ETag), "
        "or send the write without a precondition to overwrite it.",
        kind="draft-conflict",
        **exc.as_dict(),
    )
    response["ETag"] = f'"{exc.revision}"'
    return response


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


def runs_would_fail(exc: RunsWouldFail):
    """422: the draft is well formed, but every run would hit these (each names its step);
    the editor refuses to publish it for the same reasons."""
    return problem(
        422,
        "Runs of this workflow would fail",
        f"{len(exc.errors)} problem(s) every run would hit; nothing was published. "
        "Fix them in the draft and publish again.",
        kind="runs-would-fail",
        errors=exc.errors,
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
    workflow = visible_workflow(request, slug)
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
        base, if_match = precondition(request)
    except BadPrecondition as exc:
        return bad_precondition(exc)
    if hides_slug(request, slug):
        return _not_found(slug)
    if if_match and not Workflow.objects.filter(slug=slug).exists():
        return no_revision(slug)
    try:
        body = read_limited(request, MAX_DEFINITION_BYTES)
        result = drafts.import_definition(
            slug=slug,
            body=body,
            yaml_format=media_type(request) in YAML_TYPES,
            by=_actor(request),
            publish=publish,
            note=request.GET.get("note", ""),
            base_revision=base,
            team=request.api_token.team,
        )
    except drafts.DraftConflict as exc:
        return conflict(exc, if_match=if_match)
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except UnreadableDefinition as exc:
        return problem(400, "Unreadable definition", str(exc), kind="invalid-json")
    except drafts.DraftRefused as exc:
        return problem(400, "Invalid slug", str(exc), kind="invalid-slug")
    except RunsWouldFail as exc:  # ?publish=true: the new draft was taken back too
        return runs_would_fail(exc)
    except InvalidDefinition as exc:
        return _invalid(exc)
    workflow = result.workflow
    response = JsonResponse(
        {
            "slug": workflow.slug,
            "name": workflow.name,
            "draft": workflow.draft,
            "draft_revision": workflow.draft_revision,
            "published_version": workflow.published_version.number
            if workflow.published_version
            else None,
            "created": result.created,
            # What a publish would be refused for (none once published).
            "problems": run_problems(workflow.draft),
        },
        status=201 if result.created else 200,
    )
    return with_etag(response, workflow)


@require_http_methods(["PUT"])
@token_required("editor")
def draft(request, slug: str):
    """Store a draft whether or not it is valid (what an editor saves as it goes)."""
    try:
        base, if_match = precondition(request)
    except BadPrecondition as exc:
        return bad_precondition(exc)
    try:
        raw = load_definition_text(
            read_limited(request, MAX_DEFINITION_BYTES),
            yaml_format=media_type(request) in YAML_TYPES,
        )
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except UnreadableDefinition as exc:
        return problem(400, "Unreadable definition", str(exc), kind="invalid-json")
    if hides_slug(request, slug):
        return _not_found(slug)
    workflow = visible_workflow(request, slug)
    created = workflow is None
    if created and if_match:
        return no_revision(slug)
    try:
        if created:
            name = raw.get("name") if isinstance(raw, dict) else ""
            workflow = drafts.create_workflow(
                slug=slug, name=str(name or slug), by=_actor(request), team=request.api_token.team
            )
        problems = drafts.save_draft(
            workflow=workflow,
            raw=raw,
            by=_actor(request),
            base_revision=None if created else base,
        )
    except drafts.DraftRefused as exc:
        if created and workflow is not None:
            workflow.delete()
        return problem(400, "Draft refused", str(exc), kind="draft-refused")
    except drafts.DraftConflict as exc:
        return conflict(exc, if_match=if_match)
    response = JsonResponse(
        {
            "slug": slug,
            "valid": not problems,
            "problems": [p.as_dict() for p in problems],
            "draft_revision": workflow.draft_revision,
            "updated_at": workflow.updated_at.isoformat(),
        },
        status=201 if created else 200,
    )
    return with_etag(response, workflow)


@require_http_methods(["GET"])
@token_required("viewer")
def versions(request, slug: str):
    workflow = visible_workflow(request, slug)
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
    workflow = visible_workflow(request, slug)
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
    workflow = visible_workflow(request, slug)
    if workflow is None:
        return _not_found(slug)
    try:
        base, if_match = precondition(request)
        restored = drafts.restore_version(
            workflow=workflow, number=number, by=_actor(request), base_revision=base
        )
    except BadPrecondition as exc:
        return bad_precondition(exc)
    except WorkflowVersion.DoesNotExist:
        return problem(404, "No such version", str(number), kind="not-found")
    except drafts.DraftConflict as exc:
        return conflict(exc, if_match=if_match)
    response = JsonResponse(
        {
            "workflow": slug,
            "restored": number,
            "draft": restored,
            "draft_revision": workflow.draft_revision,
        }
    )
    return with_etag(response, workflow)


@require_http_methods(["POST"])
@token_required("editor")
def try_(request, slug: str):
    workflow = visible_workflow(request, slug)
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
    if not storable(body):
        return problem(400, "Invalid body", UNSTORABLE_TEXT, kind="invalid-body")
    kwargs: dict = {}
    if "event" in body:
        if not isinstance(body["event"], int):
            return problem(400, "Invalid body", "event is a stored event's id", kind="invalid-body")
        kwargs["event_id"] = body["event"]
    else:
        kwargs["data"] = body["data"]
        kwargs["event_type"] = str(body.get("type") or "")
    try:
        run = drafts.try_draft(
            workflow=workflow, by=_actor(request), hidden=request.hidden_workflows, **kwargs
        )
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
