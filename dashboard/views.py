"""Browser pages. Function views; htmx requests get the partial they asked for."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render

from workflows import selectors

from .access import role_required


@login_required
def home(request):
    return redirect("dashboard:runs")


@role_required("viewer")
def workflow_list(request):
    return render(request, "dashboard/workflows.html", {"workflows": selectors.workflows()})


@role_required("viewer")
def run_list(request):
    context = {
        "runs": selectors.runs(workflow_slug=request.GET.get("workflow") or None),
        "workflow_filter": request.GET.get("workflow", ""),
    }
    if request.htmx:
        return render(request, "dashboard/_run_rows.html", context)
    return render(request, "dashboard/runs.html", context)


@role_required("viewer")
def run_detail(request, run_id: int):
    run = selectors.run_detail(run_id)
    if run is None:
        raise Http404("no such run")
    context = {"run": run, "steps": selectors.latest_attempts(run)}
    if request.htmx:
        return render(request, "dashboard/_run_detail.html", context)
    return render(request, "dashboard/run_detail.html", context)
