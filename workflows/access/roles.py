"""Roles are Django groups; each role includes the ones below it."""

from __future__ import annotations

ROLES = ("viewer", "editor", "operator", "admin")


def rank(role: str | None) -> int:
    return ROLES.index(role) if role in ROLES else -1


def role_of(user) -> str | None:
    if not getattr(user, "is_authenticated", False):
        return None
    if user.is_superuser:
        return "admin"
    names = set(user.groups.values_list("name", flat=True))
    held = [r for r in ROLES if r in names]
    return held[-1] if held else None


def has_role(user, needed: str) -> bool:
    return rank(role_of(user)) >= rank(needed)


def ensure_groups() -> None:
    from django.contrib.auth.models import Group

    for role in ROLES:
        Group.objects.get_or_create(name=role)
