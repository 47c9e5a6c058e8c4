"""Secrets for admins: create, rotate (a new value) and delete. A value goes in and never
comes back out: the page shows each secret's name, first characters (when long enough)
and last change. Every change is audited by the service.

htmx posts get the re-rendered panel with status 200 (htmx does not swap 4xx answers by
default); plain form posts get the whole page, 400 on error.
"""

from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.access import role_required
from workflows.access import secrets as secret_service


def _panel(request, *, errors=None, values=None, notice: str = "", status: int = 200):
    context = {
        "secrets": secret_service.list_secrets(),
        "errors": errors or {},
        "values": values or {},
        "notice": notice,
    }
    if request.htmx:
        return render(request, "dashboard/_secrets_panel.html", context)
    return render(request, "dashboard/secrets.html", context, status=status)


@role_required("admin")
@require_http_methods(["GET", "POST"])
def secret_list(request):
    if request.method == "GET":
        return _panel(request)
    name = request.POST.get("name", "").strip()
    try:
        secret_service.create_secret(
            name=name, value=request.POST.get("value", ""), actor=request.user.get_username()
        )
    except secret_service.SecretError as exc:
        # The value is never put back into the form.
        return _panel(
            request, errors={exc.field: exc.message}, values={"name": name}, status=exc.status
        )
    return _panel(request, notice=f"Secret {name} created.")


@role_required("admin")
@require_POST
def secret_rotate(request, name: str):
    try:
        secret_service.rotate_secret(
            name=name, value=request.POST.get("value", ""), actor=request.user.get_username()
        )
    except secret_service.SecretError as exc:
        return _panel(request, errors={f"rotate:{name}": exc.message}, status=exc.status)
    return _panel(request, notice=f"Secret {name} rotated.")


@role_required("admin")
@require_POST
def secret_delete(request, name: str):
    try:
        secret_service.delete_secret(name=name, actor=request.user.get_username())
    except secret_service.SecretError as exc:
        return _panel(request, errors={f"rotate:{name}": exc.message}, status=exc.status)
    return _panel(request, notice=f"Secret {name} deleted.")
