"""What the editor's palette offers: the trigger kinds and every step kind of the registry,
grouped, each with its icon (small stroke drawings, so no icon font is needed)."""

from __future__ import annotations

from typing import Any

from django.utils.html import format_html

from workflows.authoring.drafts import ports_of
from workflows.steps import registry

# --- icons: small stroke drawings, so no icon font or emoji font is needed ---------------------
ICONS = {
    "file-text": "M6 3h9l3 3v15H6z M9 9h6 M9 13h6 M9 17h4",
    "globe": "M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18z M3 12h18 M12 3c3.5 3 3.5 15 0 18 "
    "M12 3c-3.5 3-3.5 15 0 18",
    "wand": "M4 20L15 9 M13 7l4 4 M17 3v3 M20 6h-3 M19 11v2 M11 4h2",
    "send": "M3 11l18-8-8 18-2-8z M11 13l10-10",
    "mail": "M3 6h18v12H3z M3 6l9 7 9-7",
    "x-octagon": "M8 3h8l5 5v8l-5 5H8l-5-5V8z M9 9l6 6 M15 9l-6 6",
    "code": "M8 7l-5 5 5 5 M16 7l5 5-5 5 M13 5l-2 14",
    "git-branch": "M6 3v13 M6 16a2.5 2.5 0 1 0 0 5a2.5 2.5 0 1 0 0-5 "
    "M18 4a2.5 2.5 0 1 0 0 5a2.5 2.5 0 1 0 0-5 M18 9c0 5-12 3-12 7",
    "shuffle": "M3 7h4l10 10h4 M3 17h4l10-10h4 M18 4l3 3-3 3 M18 14l3 3-3 3",
    "filter": "M3 4h18l-7 8v6l-4 2v-8z",
    "clock": "M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18z M12 7v5l3 2",
    "bell": "M6 16v-5a6 6 0 0 1 12 0v5l2 2H4z M10 20a2 2 0 0 0 4 0",
    "layers": "M12 3l9 5-9 5-9-5z M3 13l9 5 9-5",
    "repeat": "M4 12a8 8 0 0 1 14-5 M18 3v4h-4 M20 12a8 8 0 0 1-14 5 M6 21v-4h4",
    "zap": "M13 2L4 14h7l-1 8 9-12h-7z",
    "link": "M10 14a4 4 0 0 0 6 0l3-3a4 4 0 0 0-6-6l-1 1 M14 10a4 4 0 0 0-6 0l-3 3a4 4 0 0 0 "
    "6 6l1-1",
    "calendar": "M4 5h16v15H4z M4 9h16 M8 3v4 M16 3v4",
    "play": "M7 4l13 8-13 8z",
    "diamond": "M12 3l9 9-9 9-9-9z",
}


def icon_svg(name: str) -> str:
    return format_html(
        '<svg class="icon" viewBox="0 0 24 24" aria-hidden="true"><path d="{}"/></svg>',
        ICONS.get(name, ICONS["diamond"]),
    )


# --- the palette -----------------------------------------------------------------------------
TRIGGER_KINDS = (
    {
        "kind": "event",
        "title": "Event",
        "icon": "zap",
        "template": {"event": ""},
        "description": "Start on every event of a CloudEvents type, optionally when a CEL "
        "filter is true.",
    },
    {
        "kind": "webhook",
        "title": "Webhook",
        "icon": "link",
        "template": {"webhook": ""},
        "description": "Start on every delivery to an inbound webhook (/hooks/<slug>).",
    },
    {
        "kind": "schedule",
        "title": "Schedule",
        "icon": "calendar",
        "template": {"schedule": "@daily", "timezone": "UTC"},
        "description": "Start on a cron schedule, an alias such as @daily, or @every 30s.",
    },
    {
        "kind": "manual",
        "title": "Manual",
        "icon": "play",
        "template": {"manual": True},
        "description": "Start by hand: the Send event form, the API or manage.py emit.",
    },
)
GROUP_ORDER = ("actions", "flow", "data", "utility")
GROUP_TITLES = {"actions": "Actions", "flow": "Flow", "data": "Data", "utility": "Utility"}


def palette() -> dict[str, Any]:
    """Trigger kinds and step kinds (grouped) with what the canvas needs to draw them."""
    kinds = registry.all_kinds()
    groups: dict[str, list[dict[str, Any]]] = {}
    for kind in sorted(kinds.values(), key=lambda k: k.title.lower()):
        groups.setdefault(kind.group, []).append(
            {
                "kind": kind.name,
                "title": kind.title,
                "description": kind.description,
                "icon": kind.icon,
                "svg": icon_svg(kind.icon),
                "ports": ports_of({"kind": kind.name, "config": {}}),
                "side_effects": kind.side_effects,
            }
        )
    ordered = sorted(groups, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))
    return {
        "triggers": [{**t, "svg": icon_svg(t["icon"])} for t in TRIGGER_KINDS],
        "groups": [
            {"name": g, "title": GROUP_TITLES.get(g, g.title()), "kinds": groups[g]}
            for g in ordered
        ],
    }


def trigger_kind(trigger: Any) -> str:
    if isinstance(trigger, dict):
        for name in ("event", "webhook", "schedule", "manual"):
            if name in trigger:
                return name
    return "event"
