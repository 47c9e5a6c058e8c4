"""Template filters for the dashboard."""

from __future__ import annotations

import json

from django import template

register = template.Library()


@register.filter
def as_json(value) -> str:
    """Pretty JSON (not Python's repr) for payloads and step outputs; autoescaped."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
