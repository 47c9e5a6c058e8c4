"""GET /api/v1/events and /api/v1/events/<id>: the event store."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from workflows.api.auth import token_required
from workflows.api.problems import problem
from workflows.queries import events as store


@require_http_methods(["GET"])
@token_required("viewer")
def list_events(request):
    """Newest first. Filters: type, source, subject, correlation_id (or correlationid),
    after/before (received_at, ISO 8601); paging: before_id (or cursor) and limit."""
    try:
        query = store.parse_event_query(request.GET, strict=True)
    except store.InvalidQuery as exc:
        errors = [{"parameter": name, "message": text} for name, text in exc.errors.items()]
        return problem(400, "Invalid query", str(exc), kind="invalid-query", errors=errors)
    page, more = store.events(query, hidden=request.hidden_workflows)
    next_link = f"{request.path}?{query.page_after(page[-1].pk)}" if more else None
    response = JsonResponse(
        {"events": [store.event_as_json(event) for event in page], "next": next_link}
    )
    if next_link:
        response["Link"] = f'<{next_link}>; rel="next"'
    return response


@require_http_methods(["GET"])
@token_required("viewer")
def event_detail(request, event_id: int):
    """The event, its validation result and the runs it started (those the token may see;
    a run event of a workflow it may not see is not there for it)."""
    hidden = request.hidden_workflows
    event = store.event_detail(event_id, hidden=hidden)
    if event is None:
        return problem(404, "No such event", str(event_id), kind="not-found")
    return JsonResponse(store.event_detail_as_json(event, hidden=hidden))
