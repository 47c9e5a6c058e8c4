"""The REST API, version 1. Small views: parse, call a service, shape the answer."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from workflows.access import roles
from workflows.api import editor as drafts_api
from workflows.api.auth import hides, hides_slug, token_required, visible_workflow
from workflows.api.bodies import UNSTORABLE_TEXT, BodyTooLarge, media_type, read_limited, storable
from workflows.api.pagination import InvalidPage, page_params
from workflows.api.problems import problem
from workflows.authoring.definition_files import (
    YAML_TYPES,
    UnreadableDefinition,
    load_definition_text,
)
from workflows.authoring.definitions import RunsWouldFail
from workflows.authoring.preflight import run_problems
from workflows.catalog.models import Workflow
from workflows.core.definition import InvalidDefinition
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.queries import runs as selectors

MAX_DEFINITION_BYTES = 1024 * 1024


def _too_large(exc: BodyTooLarge):
    return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")


@require_http_methods(["GET", "PUT"])
@token_required("viewer")
def workflow(request, slug: str):
    if request.method == "GET":
        found = visible_workflow(request, slug)
        if found is None:
            return problem(404, "No such workflow", slug, kind="not-found")
        return drafts_api.with_etag(JsonResponse(_workflow_json(found)), found)
    if roles.rank(request.api_token.role) < roles.rank("editor"):
        return problem(
            403, "Forbidden", "changing a workflow needs the editor role", kind="forbidden"
        )
    if hides_slug(request, slug):
        return problem(404, "No such workflow", slug, kind="not-found")
    try:
        raw = load_definition_text(
            read_limited(request, MAX_DEFINITION_BYTES),
            yaml_format=media_type(request) in YAML_TYPES,
        )
        # Optional optimistic concurrency: If-Match (the ETag) or ?base_revision=.
        saved, created = drafts_api.put_definition(request, slug=slug, raw=raw)
    except drafts_api.Refused as exc:
        return exc.response
    except BodyTooLarge as exc:
        return _too_large(exc)
    except UnreadableDefinition as exc:  # not JSON/YAML at all
        return problem(400, "Unreadable definition", str(exc), kind="invalid-json")
    except InvalidDefinition as exc:
        errors = [p.as_dict() for p in exc.problems]
        return problem(
            400,
            "Invalid workflow definition",
            f"{len(errors)} problem(s) in the definition",
            kind="invalid-definition",
            errors=errors,
        )
    # Stored, and what a publish would be refused for (as the editor shows as it saves).
    body = {**_workflow_json(saved), "problems": run_problems(saved.draft)}
    response = JsonResponse(body, status=201 if created else 200)
    return drafts_api.with_etag(response, saved)


@require_http_methods(["POST"])
@token_required("editor")
def publish(request, slug: str):
    if visible_workflow(request, slug) is None:
        return problem(404, "No such workflow", slug, kind="not-found")
    note = ""
    if request.body:
        try:
            note = str(json.loads(request.body).get("note", ""))[:500]
        except (ValueError, AttributeError):
            return problem(
                400, "Invalid body", 'send {"note": "..."} or nothing', kind="invalid-body"
            )
    try:
        # Refused when If-Match / base_revision names a revision that is not the draft's.
        version = drafts_api.publish_seen(
            request, slug=slug, note=note, published_by=request.api_token.name
        )
    except drafts_api.Refused as exc:
        return exc.response
    except RunsWouldFail as exc:
        return drafts_api.runs_would_fail(exc)
    except InvalidDefinition as exc:
        return problem(
            400,
            "Invalid workflow definition",
            str(exc),
            kind="invalid-definition",
            errors=[p.as_dict() for p in exc.problems],
        )
    return JsonResponse({"workflow": slug, "version": version.number}, status=201)


@require_http_methods(["GET"])
@token_required("viewer")
def runs(request):
    """Newest first; filters workflow, status and origin (shadow runs only when asked for);
    paging: before (a run id) and limit (at most 500; more is read as 500)."""
    try:
        page_at = page_params(
            request.GET, cursor="before", default=selectors.PAGE_SIZE, maximum=500, clamp=True
        )
    except InvalidPage as exc:
        return exc.response()
    origin = request.GET.get("origin") or None
    if origin is not None and origin not in selectors.ORIGINS:
        return problem(
            400,
            "Invalid query",
            "origin is one of " + ", ".join(selectors.ORIGINS),
            kind="invalid-query",
        )
    page = selectors.runs(
        workflow_slug=request.GET.get("workflow") or None,
        status=request.GET.get("status") or None,
        origin=origin,
        before_id=page_at.before,
        limit=page_at.limit,
        hidden=request.hidden_workflows,
    )
    body = {"runs": [selectors.run_as_json(r) for r in page]}
    if len(page) == page_at.limit:
        # The next page keeps the filters, or it would list other workflows' runs.
        kept = {k: request.GET[k] for k in ("workflow", "status", "origin") if request.GET.get(k)}
        body["next"] = "?" + urlencode({**kept, "before": page[-1].pk, "limit": page_at.limit})
    return JsonResponse(body)


@require_http_methods(["GET"])
@token_required("viewer")
def run(request, run_id: int):
    found = selectors.run_detail(run_id)
    if found is None or hides(request, found.workflow_id):
        return problem(404, "No such run", str(run_id), kind="not-found")
    return JsonResponse(selectors.run_as_json(found))


def _workflow_json(workflow: Workflow) -> dict:
    version = workflow.published_version
    return {
        "slug": workflow.slug,
        "name": workflow.name,
        "draft": workflow.draft,
        "draft_revision": workflow.draft_revision,
        "published_version": version.number if version else None,
        "updated_at": workflow.updated_at.isoformat(),
    }


@require_http_methods(["POST"])
@token_required("operator")
def cancel(request, run_id: int):
    from workflows.runs.control import cancel_run

    found = selectors.run_detail(run_id)
    if found is None or hides(request, found.workflow_id):
        return problem(404, "No such run", str(run_id), kind="not-found")
    reason = ""
    if request.body:
        try:
            reason = str(json.loads(request.body).get("reason", ""))[:500]
        except (ValueError, AttributeError):
            return problem(
                400, "Invalid body", 'send {"reason": "..."} or nothing', kind="invalid-body"
            )
    if not cancel_run(run_id=run_id, reason=reason, by=f"token:{request.api_token.name}"):
        return problem(
            409,
            "Run already finished",
            "only queued or running runs can be cancelled",
            kind="run-finished",
        )
    return JsonResponse(selectors.run_as_json(selectors.run_detail(run_id)), status=202)


@require_http_methods(["POST"])
@token_required("operator")
def start_run(request, slug: str):
    """Start a run by hand: fires `signalbox.manual.<slug>`, which a workflow with a
    `{"manual": true}` trigger listens to. The run appears once the bus delivers it."""
    from workflows.authoring.definitions import manual_event_type
    from workflows.events.manual_events import manual_source, send_manual_event

    found = Workflow.objects.select_related("published_version").filter(slug=slug).first()
    if found is None or found.published_version is None or hides(request, found.pk):
        return problem(404, "No published workflow", slug, kind="not-found")
    if not found.subscriptions.filter(event_type=manual_event_type(slug)).exists():
        return problem(
            409,
            "Not startable by hand",
            'add a {"manual": true} trigger and publish',
            kind="no-manual-trigger",
        )
    try:
        body = loads_json(read_limited(request, MAX_DEFINITION_BYTES)) if request.body else {}
    except (BodyTooLarge, InvalidEvent) as exc:
        return problem(400, "Invalid body", str(exc), kind="invalid-body")
    if not isinstance(body, dict):
        return problem(400, "Invalid body", 'send {"data": ...}', kind="invalid-body")
    if not storable(body):
        return problem(400, "Invalid body", UNSTORABLE_TEXT, kind="invalid-body")
    event, _created = send_manual_event(
        event_type=manual_event_type(slug),
        data=body.get("data"),
        source=manual_source(f"token-{request.api_token.name}"),
        subject=slug,
    )
    return JsonResponse({"event": event.pk, "workflow": slug}, status=202)
