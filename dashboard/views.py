"""Browser pages. Function views; htmx requests get the partial they asked for."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render

from dashboard.access import role_required
from dashboard.live.consumers import run_detail_context
from workflows.core.states import RunStatus
from workflows.queries import dashboard as ds
from workflows.queries import runs as selectors


@login_required
def home(request):
    return redirect("dashboard:runs")


@role_required("viewer")
def workflow_list(request):
    """Workflows in slug order, a page at a time, optionally those matching a search."""
    page = selectors.workflow_page(
        after=request.GET.get("after", "")[:100],
        search=request.GET.get("q", "").strip()[:200],
        hidden=ds.hidden_workflow_ids(request.user),
    )
    return render(request, "dashboard/workflows.html", {"workflows": page.workflows, "page": page})


@role_required("viewer")
def run_list(request):
    """Runs, newest first, filtered and keyset-paginated (workflows.queries.dashboard)."""
    query, errors = ds.parse_run_query(request.GET)
    hidden = ds.hidden_workflow_ids(request.user)
    if query.workflow and query.workflow in ds.hidden_slugs(hidden):
        raise Http404("no such workflow")
    page = ds.run_page(query, hidden=hidden)
    context = {
        "runs": page.runs,
        "page": page,
        "query": query,
        "errors": errors,
        "workflow_filter": query.workflow,
        "statuses": [s.value for s in RunStatus],
        "socket_url": "/ws/runs/" + (f"?{query.querystring()}" if query.filtered else ""),
    }
    if query.before_id:
        context["socket_url"] = "/ws/runs/?" + query.querystring(before_id=query.before_id)
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "dashboard/_run_rows.html", context)
    # Only the full page has the filter form.
    context["workflow_choices"] = ds.workflow_choices(hidden)
    return render(request, "dashboard/runs.html", context)


@role_required("viewer")
def run_detail(request, run_id: int):
    view = ds.run_view(run_id)
    if view is None:
        raise Http404("no such run")
    if not ds.can_see_workflow(request.user, view.run.workflow):
        raise Http404("no such run")
    context = run_detail_context(view)
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "dashboard/_run_detail.html", context)
    return render(request, "dashboard/run_detail.html", context)
