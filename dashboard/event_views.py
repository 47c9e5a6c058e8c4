"""Event store pages: the list with filters, one event, and the manual "Send event" form."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_http_methods

from dashboard.access import role_required
from workflows.access.roles import has_role
from workflows.catalog.models import TriggerSubscription
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.events.manual_events import manual_source, send_manual_event
from workflows.events.models import EventType
from workflows.events.schemas import SchemaViolation
from workflows.queries import events as store
from workflows.queries.dashboard import hidden_workflow_ids

# The binary-mode header of each context attribute, shown beside its value.
ATTRIBUTES = (
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
)


@role_required("viewer")
def event_list(request):
    error = None
    try:
        query = store.parse_event_query(request.GET)
    except store.InvalidQuery as exc:
        query, error = store.EventQuery(), exc.errors
    hidden = hidden_workflow_ids(request.user)
    page, more = ([], False) if error else store.events(query, with_run_counts=True, hidden=hidden)
    raw = {name: request.GET.get(name, "") for name in (*store.TEXT_FILTERS, "after", "before")}
    if not raw["correlation_id"]:
        raw["correlation_id"] = request.GET.get("correlationid", "")
    context = {
        "events": page,
        "query": query,
        "form_values": raw,
        "errors": error,
        "older_query": query.page_after(page[-1].pk) if more else "",
        "paged": query.before_id is not None,
        "newest_query": urlencode(query.filters()),
        "can_send": has_role(request.user, "editor"),
    }
    # A history-restore request wants the whole page, not the table.
    partial = request.htmx and not request.htmx.history_restore_request
    template = "dashboard/_event_table.html" if partial else "dashboard/events.html"
    response = render(request, template, context)
    # The same URL answers with a partial or a page: keep caches from mixing them up.
    patch_vary_headers(response, ("HX-Request",))
    return response


@role_required("viewer")
def event_detail(request, event_id: int):
    hidden = hidden_workflow_ids(request.user)
    # A hidden workflow's run events are not shown at all, as in the list and the live flow.
    event = store.event_detail(event_id, hidden=hidden)
    if event is None:
        raise Http404("no such event")
    extensions = dict(event.extensions or {})
    attributes = [(name, getattr(event, "ce_id" if name == "id" else name)) for name in ATTRIBUTES]
    attributes += sorted(extensions.items())
    context = {
        "event": event,
        "attributes": [
            {"name": name, "header": f"ce-{name}", "value": value}
            for name, value in attributes
            if value not in ("", None)
        ],
        "payload": _pretty(event.data) if not event.data_is_base64 else event.data,
        "structured": _pretty(store.event_as_json(event)["cloudevent"]),
        "runs": store.runs_started(event, hidden=hidden),
    }
    return render(request, "dashboard/events_detail.html", context)


def _pretty(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


class SendEventForm(forms.Form):
    type = forms.CharField(max_length=255, help_text="e.g. com.example.order.placed")
    subject = forms.CharField(max_length=1024, required=False)
    data = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false"}),
        initial="{}",
        required=False,
        help_text="JSON; empty for an event without data",
    )

    def clean_type(self):
        return self.cleaned_data["type"].strip()

    def clean_subject(self):
        return self.cleaned_data["subject"].strip()

    def clean_data(self):
        text = self.cleaned_data["data"]
        limit = settings.SIGNALBOX["MAX_EVENT_BYTES"]
        if len(text.encode()) > limit:
            raise forms.ValidationError(f"the data is larger than {limit} bytes")
        if not text.strip():
            return None
        try:
            return loads_json(text.encode(), what="data")
        except InvalidEvent as exc:
            raise forms.ValidationError(exc.problems[0]["message"]) from exc


@require_http_methods(["GET", "POST"])
@role_required("editor")
def send_event(request):
    if request.method == "POST":
        form = SendEventForm(request.POST)
        if form.is_valid():
            try:
                event, _created = send_manual_event(
                    event_type=form.cleaned_data["type"],
                    data=form.cleaned_data["data"],
                    subject=form.cleaned_data["subject"],
                    source=manual_source(request.user.get_username()),
                )
            except InvalidEvent as exc:
                for item in exc.problems:
                    field = item["attribute"] if item["attribute"] in form.fields else None
                    form.add_error(field, f"{item['attribute']}: {item['message']}")
            except SchemaViolation as exc:
                form.add_error(
                    "data",
                    f"does not match schema v{exc.version} of {exc.event_type}: "
                    + "; ".join(f"{e['path']} {e['message']}" for e in exc.errors[:10]),
                )
            else:
                messages.success(request, f"Event #{event.pk} sent.")
                return redirect("dashboard:event", event_id=event.pk)
        status = 400
    else:
        form = SendEventForm(initial={"type": request.GET.get("type", "")})
        status = 200
    context = {
        "form": form,
        "source": manual_source(request.user.get_username()),
        "known_types": _known_types(),
    }
    return render(request, "dashboard/events_send.html", context, status=status)


def _known_types() -> list[str]:
    """Suggestions for the type field: registered types, and every type a published
    workflow listens to (a `manual` trigger listens to signalbox.manual.<slug>)."""
    registered = EventType.objects.values_list("name", flat=True)
    subscribed = TriggerSubscription.objects.values_list("event_type", flat=True)
    return sorted({*registered, *subscribed})
