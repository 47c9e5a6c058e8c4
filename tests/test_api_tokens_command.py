"""`manage.py api_tokens list|revoke`: tokens are listed without their secrets, and a
revoked token is refused from its next request on, with the revocation audited."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from workflows.access.models import AuditEntry
from workflows.access.tokens import create_api_token


def run(*args: str) -> str:
    out = StringIO()
    call_command("api_tokens", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def tokens(db):
    finance = Group.objects.create(name="finance")
    _ci, ci_secret = create_api_token(name="ci", role="editor")
    _pay, _secret = create_api_token(name="payroll-bot", role="viewer", team=finance)
    return ci_secret


def test_the_list_shows_names_roles_and_teams_but_never_secrets(tokens):
    listing = run("list")

    assert "ci" in listing and "payroll-bot" in listing
    assert "finance" in listing and "(every team)" in listing
    assert tokens not in listing and tokens[10:] not in listing
    assert tokens[:10] in listing  # the prefix, to recognise a token


def test_a_revoked_token_is_refused_at_once_and_the_revocation_is_audited(tokens, client):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {tokens}"}
    assert client.get("/api/v1/runs", **auth).status_code == 200

    out = run("revoke", "ci", "--reason", "leaked in a log")

    assert "revoked" in out
    assert client.get("/api/v1/runs", **auth).status_code == 401
    entry = AuditEntry.objects.get(action="api_token.revoke")
    assert (entry.target_id, entry.reason) == ("ci", "leaked in a log")
    assert entry.actor.startswith("cli:")
    assert "ci" not in run("list").split()
    assert "ci" in run("list", "--all").split()

    assert "already revoked" in run("revoke", "ci")
    assert AuditEntry.objects.filter(action="api_token.revoke").count() == 1


def test_revoking_an_unknown_token_is_an_error(tokens):
    with pytest.raises(CommandError, match="no API token named 'nope'"):
        run("revoke", "nope")
