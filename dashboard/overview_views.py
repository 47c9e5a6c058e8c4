"""The live pages: the overview (figures, charts, the demo traffic switch), the live event
flow, and an event's lineage. Each page renders its first state here; its WebSocket
(dashboard/live/consumers.py) keeps it current."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from dashboard import metrics
from dashboard.access import role_required
from dashboard.event_views import ATTRIBUTES
from dashboard.live import flow_map
from dashboard.live.consumers import overview_context
from workflows.access.roles import has_role
from workflows.access.secrets import mask
from workflows.demo import traffic as demo_traffic
from workflows.queries import dashboard as ds
from workflows.queries import events as store


@role_required("viewer")
def overview(request):
    window = request.GET.get("window", metrics.DEFAULT_WINDOW)
    if window not in metrics.WINDOWS:
        window = metrics.DEFAULT_WINDOW
    hidden = ds.hidden_workflow_ids(request.user)
    data = metrics.overview(window, hidden=hidden)
    context = overview_context(data, has_role(request.user, "operator"))
    context["window"] = window
    return render(request, "dashboard/overview.html", context)


@require_POST
@role_required("operator")
def demo_switch(request):
    on = request.POST.get("on") == "1"
    state = demo_traffic.switch(on=on, by=request.user.get_username())
    metrics.cache.clear()
    if request.htmx:  # the overview's figures, showing the new state at once
        window = request.GET.get("window", metrics.DEFAULT_WINDOW)
        hidden = ds.hidden_workflow_ids(request.user)
        data = metrics.overview(window, hidden=hidden)
        return render(request, "dashboard/_overview_figures.html", overview_context(data, True))
    if state.on:
        messages.success(
            request,
            "Demo traffic is on: sample events every half second or so; it turns itself off "
            f"in {demo_traffic.DEMO_TTL_SECONDS // 60} minutes.",
        )
    else:
        messages.success(request, "Demo traffic is off.")
    return redirect("dashboard:overview")


# `channel` and `workflow` are what an edge of the flow map filters by (with `type`).
FLOW_FILTERS = ("type", "source", "q", "channel", "workflow")


@role_required("viewer")
def flow(request):
    filters = {name: request.GET.get(name, "").strip() for name in FLOW_FILTERS}
    socket_query = urlencode({k: v for k, v in filters.items() if v})
    hidden = ds.hidden_workflow_ids(request.user)
    return render(
        request,
        "dashboard/flow.html",
        {
            "filters": filters,
            "filtered": any(filters.values()),
            "socket_url": "/ws/flow/" + (f"?{socket_query}" if socket_query else ""),
            "flow_map": flow_map.flow_map(hidden_slugs=ds.hidden_slugs(hidden)),
            "channels": list(flow_map.CHANNELS.items()),
        },
    )


def _event_context(request, event_id: int) -> dict:
    event = store.event_detail(event_id)
    if event is None:
        raise Http404("no such event")
    hidden = ds.hidden_workflow_ids(request.user)
    if store.is_hidden(event, hidden=hidden):
        raise Http404("no such event")
    extensions = dict(event.extensions or {})
    attributes = [(name, getattr(event, "ce_id" if name == "id" else name)) for name in ATTRIBUTES]
    attributes += sorted(extensions.items())
    data = event.data if event.data_is_base64 else mask(event.data)
    return {
        "event": event,
        "attributes": [
            {"name": name, "header": f"ce-{name}", "value": value}
            for name, value in attributes
            if value not in ("", None)
        ],
        "payload": data
        if event.data_is_base64
        else json.dumps(data, indent=2, ensure_ascii=False, default=str),
        "lineage": ds.lineage(event.pk, hidden=hidden),
        "event_id": event.pk,
    }


@role_required("viewer")
def flow_event(request, event_id: int):
    """The panel beside the flow: one event, its attributes, validation and lineage."""
    return render(request, "dashboard/_flow_detail.html", _event_context(request, event_id))


@role_required("viewer")
def lineage(request, event_id: int):
    return render(request, "dashboard/lineage.html", _event_context(request, event_id))
