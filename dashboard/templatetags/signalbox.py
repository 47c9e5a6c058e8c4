"""Template filters for the dashboard."""

from __future__ import annotations

import json

from django import template

register = template.Library()


@register.filter
def as_json(value) -> str:
    """Pretty JSON (not Python's repr) for payloads and step outputs; autoescaped."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@register.filter
def holds_role(user, role: str) -> bool:
    """Whether the user holds `role` (or a higher one): for links only, views check again."""
    from workflows.access.roles import rank, role_of

    # Asked by every page's navigation: the role is read once per request's user object.
    if not hasattr(user, "_signalbox_role"):
        user._signalbox_role = role_of(user)
    return rank(user._signalbox_role) >= rank(role)


@register.filter
def run_version(run) -> str:
    """Which version a run ran, as a person reads it: a try runs a snapshot of the draft
    and a shadow run a draft under test (no number), so neither reads "vNone"."""
    if run.origin == "try":
        return "try of the draft"
    number = run.version.number
    if number is None:
        return "draft snapshot"
    return f"v{number}"


@register.inclusion_tag("dashboard/_run_version.html")
def run_version_badge(run):
    """The version cell of a run: marked as a try, so it never reads as a published run."""
    return {"run": run, "label": run_version(run)}
