"""Test clients signed in as users with roles (or team groups)."""

from __future__ import annotations

from django.contrib.auth.models import Group, User
from django.test import Client


def sign_in(client: Client, username: str, *groups: str) -> Client:
    user = User.objects.create_user(username, password="pw")
    for group in groups:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    client.force_login(user)
    return client
