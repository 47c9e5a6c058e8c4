"""Test clients signed in as users with roles (or team groups)."""

from __future__ import annotations

from django.contrib.auth.models import Group, User
from django.test import Client


def sign_in(client: Client, username: str, *groups: str | Group) -> Client:
    """`client` signed in as a new user in `groups`: role names ("operator") or teams."""
    user = User.objects.create_user(username, password="pw")
    for group in groups:
        user.groups.add(
            group if isinstance(group, Group) else Group.objects.get_or_create(name=group)[0]
        )
    client.force_login(user)
    return client
