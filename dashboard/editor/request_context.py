"""What every editor view reads from a request and answers with: the workflow it may see,
the definition on the canvas, the draft revision a write is based on, and the htmx events
that tell the page what changed (see editor_views for the whole picture)."""

from __future__ import annotations

import copy
import json
from typing import Any

from django.core.exceptions import BadRequest, PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render

from workflows.authoring import drafts
from workflows.catalog.models import Workflow
from workflows.events.envelope import InvalidEvent, loads_json

MAX_DEFINITION_BYTES = 1024 * 1024


# --- access --------------------------------------------------------------------------------
def workflow_for(request, slug: str, *, edit: bool = False) -> Workflow:
    workflow = get_object_or_404(
        Workflow.objects.select_related("team", "published_version"), slug=slug
    )
    if not drafts.may_view(request.user, workflow):
        raise Http404("no such workflow")
    if edit and not drafts.may_edit(request.user, workflow):
        raise PermissionDenied("changing a workflow needs the editor role")
    return workflow


def posted_definition(request, workflow: Workflow) -> dict:
    """The definition on the canvas, sent with the request; the stored draft without it."""
    text = request.POST.get("definition")
    if text is None:
        return copy.deepcopy(workflow.draft)
    try:
        raw = loads_json(text.encode("utf-8", "surrogatepass"), what="definition")
    except InvalidEvent as exc:
        raise BadRequest(str(exc)) from exc
    if not isinstance(raw, dict):
        raise BadRequest("the definition is a JSON object")
    return raw


def node_index(request, items: list) -> int:
    try:
        index = int(request.POST.get("index", request.GET.get("index", "")))
    except ValueError as exc:
        raise BadRequest("index is a number") from exc
    if not 0 <= index < len(items):
        raise Http404("no such node")
    return index


def with_trigger(
    response: HttpResponse, name: str, detail: dict, more: dict | None = None
) -> HttpResponse:
    """Send the event `name` to the page (and the events in `more`, after it)."""
    response["HX-Trigger"] = json.dumps({name: detail, **(more or {})})
    return response


# --- who saved the draft last: revisions and conflicts -------------------------------------
def base_revision_of(request) -> int | None:
    """The draft revision the page's write is based on (none: write whatever is stored)."""
    value = request.headers.get("X-Draft-Revision", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise BadRequest("X-Draft-Revision is a revision number") from exc


def client_of(request) -> str:
    """The editor page that writes (it recognises its own saves among the socket's)."""
    return request.headers.get("X-Editor-Client", "")[:64]


def draft_state(workflow: Workflow) -> dict[str, Any]:
    return {
        "revision": workflow.draft_revision,
        "savedBy": workflow.draft_updated_by,
        "savedAt": workflow.updated_at.isoformat(),
    }


def draft_written(
    request, template: str, context: dict, workflow: Workflow, more: dict | None = None
) -> HttpResponse:
    """A panel that wrote the draft (even when it refused the rest of what was asked):
    `editor:draft` tells the page the revision it now holds, then the events in `more`."""
    response = render(request, template, context)
    return with_trigger(response, "editor:draft", draft_state(workflow), more)


def conflict_panel(
    request, template: str, context: dict, conflict: drafts.DraftConflict
) -> HttpResponse:
    """A panel refused because the draft changed: 409, the panel naming who saved last and
    when, and `editor:conflict` for the canvas to offer reload or overwrite."""
    context["conflict"] = conflict
    response = render(request, template, context, status=409)
    return with_trigger(response, "editor:conflict", conflict.as_dict())


def username(request) -> str:
    return request.user.get_username()
