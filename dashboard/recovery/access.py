"""What the recovery pages share: who may act (operators), and the run or batch of a
request, which answers 404 when it belongs to another team (as if it did not exist).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect

from workflows.access.roles import has_role
from workflows.queries import dashboard as ds
from workflows.queries import runs as selectors
from workflows.recovery import selectors as recovery
from workflows.runs.models import Run


def can_operate(request) -> bool:
    return has_role(request.user, "operator")


def require_operator(request) -> None:
    if not can_operate(request):
        raise PermissionDenied("this needs the operator role")


def go(request, url: str):
    """Redirect; an htmx request is told to navigate instead of swapping the page in."""
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


def run_or_404(request, run_id: int) -> Run:
    run = selectors.run_detail(run_id)
    if run is None:
        raise Http404("no such run")
    if not ds.can_see_workflow(request.user, run.workflow):
        raise Http404("no such run")
    return run


def batch_or_404(request, batch_id: int):
    """A batch over a workflow of another team is not there for this user."""
    batch = recovery.batch(batch_id, hidden=ds.hidden_workflow_ids(request.user))
    if batch is None:
        raise Http404("no such batch")
    return batch
