"""The broker connections page: every connection with its health (viewer), and the forms
to add, enable, disable and remove one (admin, as in the API). Passwords are never entered
or shown here: a connection names a secret of the secrets store."""

from __future__ import annotations

import json

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.access import role_required
from workflows.access.roles import has_role
from workflows.events.connections import (
    add_connection,
    connection_health,
    remove_connection,
    update_connection,
)
from workflows.events.connectors.base import InvalidConnection
from workflows.events.connectors.registry import all_kinds
from workflows.events.models import Connection

FIELDS = ("name", "kind", "url", "options", "default_type", "username", "password_secret")


def _page(request, *, values=None, error: str = "", status: int = 200):
    context = {
        "connections": connection_health(),
        "can_edit": has_role(request.user, "admin"),
        "kinds": sorted(all_kinds()),
        "values": values or {"kind": "amqp", "options": "{}"},
        "error": error,
    }
    return render(request, "dashboard/connections.html", context, status=status)


def _needs_admin(request) -> None:
    if not has_role(request.user, "admin"):
        raise PermissionDenied("changing connections needs the admin role")


@role_required("viewer")
@require_http_methods(["GET", "POST"])
def connection_list(request):
    if request.method == "GET":
        return _page(request)
    _needs_admin(request)
    values = {key: request.POST.get(key, "").strip() for key in FIELDS}
    try:
        options = json.loads(values["options"] or "{}")
    except json.JSONDecodeError as exc:
        return _page(request, values=values, error=f"options is not JSON: {exc}", status=400)
    try:
        add_connection(**{**values, "options": options})
    except InvalidConnection as exc:
        return _page(request, values=values, error=str(exc), status=400)
    return redirect("dashboard:connections")


@role_required("viewer")
@require_POST
def connection_action(request, name: str, action: str):
    if action not in ("enable", "disable", "remove"):
        raise Http404("no such action")
    _needs_admin(request)
    try:
        if action == "remove":
            remove_connection(name=name)
        else:
            update_connection(name=name, enabled=action == "enable")
    except Connection.DoesNotExist as exc:
        return _page(request, error=str(exc), status=404)
    except InvalidConnection as exc:  # a stored setting no longer valid (a secret removed)
        return _page(request, error=str(exc), status=400)
    return redirect("dashboard:connections")
