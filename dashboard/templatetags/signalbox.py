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
    from workflows.roles import rank, role_of

    # Asked by every page's navigation: the role is read once per request's user object.
    if not hasattr(user, "_signalbox_role"):
        user._signalbox_role = role_of(user)
    return rank(user._signalbox_role) >= rank(role)
