"""Schema registry pages: the event types, one type with its versions, and the editor forms
(new type, register a version, change compatibility). Viewers read; editors change.

Form errors are rendered inline. htmx posts get the re-rendered part with status 200 (htmx
does not swap 4xx answers by default); plain form posts get the whole page, 400 on error.
"""

from __future__ import annotations

import json

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.access import role_required
from workflows.access.roles import has_role
from workflows.events.compatibility import MODES, InvalidSchema
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.events.models import EventType
from workflows.events.schemas import (
    IncompatibleSchema,
    InvalidEventType,
    register_event_type,
    register_schema,
    set_compatibility,
)
from workflows.queries import schemas as schema_selectors

MAX_SCHEMA_BYTES = 256 * 1024
MODE_HELP = {
    "BACKWARD": "consumers using the new schema can read data written with the old one",
    "FORWARD": "consumers using the old schema can read data written with the new one",
    "FULL": "both BACKWARD and FORWARD",
    "NONE": "no check: any valid schema is accepted",
}


def _modes():
    return [{"name": m, "help": MODE_HELP[m]} for m in MODES]


@role_required("viewer")
@require_http_methods(["GET", "POST"])
def schema_list(request):
    context = {
        "event_types": schema_selectors.event_types(),
        "can_edit": has_role(request.user, "editor"),
        "modes": _modes(),
        "values": {"compatibility": "BACKWARD"},
        "errors": {},
    }
    if request.method == "GET":
        return render(request, "dashboard/schemas.html", context)
    # POST: create a type (on the list URL, so no path can shadow a type's own page).
    if not context["can_edit"]:
        raise PermissionDenied("registering an event type needs the editor role")
    values = {key: request.POST.get(key, "").strip() for key in ("name", "description")}
    values["compatibility"] = request.POST.get("compatibility", "BACKWARD")
    errors: dict[str, str] = {}
    if EventType.objects.filter(name=values["name"]).exists():
        errors["name"] = "this event type is already registered"
    else:
        try:
            register_event_type(**values)
        except InvalidEventType as exc:
            errors = exc.errors
    if not errors:
        target = reverse("dashboard:schema", args=[values["name"]])
        if request.htmx:
            response = HttpResponse(status=204)
            response["HX-Redirect"] = target
            return response
        return redirect(target)
    context.update(values=values, errors=errors)
    if request.htmx:
        return render(request, "dashboard/schemas_new_type.html", context)
    return render(request, "dashboard/schemas.html", context, status=400)


def _found(name: str) -> EventType:
    event_type = schema_selectors.event_type(name)
    if event_type is None:
        raise Http404("no such event type")
    return event_type


def _panel(request, event_type: EventType, *, status: int = 200, **extra):
    """The type page, or just its panel for htmx."""
    event_type = schema_selectors.event_type(event_type.name)  # fresh counts after a change
    versions = schema_selectors.versions(event_type)
    context = {
        "event_type": event_type,
        "versions": [
            {
                "row": v,
                "pretty": json.dumps(v.schema, indent=2, ensure_ascii=False),
                "dataschema": request.build_absolute_uri(
                    reverse("api-schema-version", args=[event_type.name, v.version])
                ),
            }
            for v in versions
        ],
        "can_edit": has_role(request.user, "editor"),
        "modes": _modes(),
        "schema_text": "",
        **extra,
    }
    if not context["schema_text"]:
        # Start the editor from the latest schema: a new version is usually a small edit.
        context["schema_text"] = (
            context["versions"][0]["pretty"]
            if versions
            else '{\n  "type": "object",\n  "properties": {},\n  "additionalProperties": false\n}'
        )
    if request.htmx:
        return render(request, "dashboard/schemas_type_panel.html", context)
    return render(request, "dashboard/schemas_type.html", context, status=status)


@role_required("viewer")
def schema_type(request, name: str):
    return _panel(request, _found(name))


@role_required("editor")
@require_POST
def schema_register(request, name: str):
    event_type = _found(name)
    text = request.POST.get("schema", "")
    failure: dict = {}
    schema = None
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        failure = {"title": f"The schema is larger than {MAX_SCHEMA_BYTES} bytes", "items": []}
    else:
        try:
            schema = loads_json(text.encode(), what="schema")
        except InvalidEvent as exc:
            failure = {
                "title": "This is not JSON",
                "items": [{"path": "", "message": exc.problems[0]["message"]}],
            }
    if not failure:
        try:
            saved, created = register_schema(
                event_type=event_type, schema=schema, created_by=request.user.get_username()
            )
        except InvalidSchema as exc:
            failure = {
                "title": "This is not a valid JSON Schema (draft 2020-12)",
                "items": exc.errors,
            }
        except IncompatibleSchema as exc:
            failure = {
                "title": f"Refused: not {exc.mode} compatible with version {exc.against_version}",
                "items": [i.as_dict() for i in exc.incompatibilities],
            }
    if failure:
        return _panel(request, event_type, status=400, schema_text=text, failure=failure)
    if not request.htmx:
        return redirect("dashboard:schema", name=event_type.name)
    notice = (
        f"Registered version {saved.version}."
        if created
        else f"Unchanged: this is already version {saved.version}."
    )
    return _panel(request, event_type, notice=notice)


@role_required("editor")
@require_POST
def schema_mode(request, name: str):
    event_type = _found(name)
    try:
        set_compatibility(
            event_type=event_type, compatibility=request.POST.get("compatibility", "")
        )
    except InvalidEventType as exc:
        return _panel(
            request,
            event_type,
            status=400,
            compatibility_error=exc.errors.get("compatibility", str(exc)),
        )
    if not request.htmx:
        return redirect("dashboard:schema", name=event_type.name)
    fresh = EventType.objects.get(pk=event_type.pk)
    return _panel(request, fresh, notice=f"Compatibility set to {fresh.compatibility}.")
