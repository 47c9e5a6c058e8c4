"""GET /api/v1/events and /api/v1/events/<id>: the event store (to be built)."""

from __future__ import annotations

from .auth import token_required
from .problems import problem


@token_required("viewer")
def list_events(request):
    return problem(501, "Not implemented yet", "the event store API is being built")


@token_required("viewer")
def event_detail(request, event_id: int):
    return problem(501, "Not implemented yet", "the event store API is being built")
