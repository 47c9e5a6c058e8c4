"""Management commands: API tokens shown once and stored hashed; an idempotent bootstrap."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connection

from tests.stack import database_url_for
from workflows.access.models import ApiToken
from workflows.access.roles import ROLES, role_of
from workflows.access.tokens import authenticate_token
from workflows.catalog.models import Workflow, WorkflowVersion

ROOT = Path(__file__).resolve().parent.parent


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- create_api_token ---------------------------------------------------------------------------
def test_create_api_token_prints_a_token_once_that_then_authenticates(client, db):
    out, err = run("create_api_token", "ci")

    token = out.strip()
    assert len(out.strip().splitlines()) == 1
    assert token.startswith("sbx_") and len(token) > 30
    assert token not in err
    assert "only this once" in err
    assert authenticate_token(token).name == "ci"
    response = client.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_create_api_token_stores_only_a_sha256_of_the_token(db):
    token = run("create_api_token", "hashed")[0].strip()

    row = ApiToken.objects.get(name="hashed")
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token.startswith(row.prefix) and len(row.prefix) < len(token) / 2
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM workflows_apitoken")
        stored = " ".join(str(value) for row in cursor.fetchall() for value in row)
    assert token not in stored


def test_create_api_token_gives_the_role_asked_for(db):
    token = run("create_api_token", "reader", "--role", "viewer")[0].strip()

    assert authenticate_token(token).role == "viewer"


def test_create_api_token_makes_a_different_token_every_time(db):
    first = run("create_api_token", "one")[0].strip()
    second = run("create_api_token", "two")[0].strip()

    assert first != second


def test_create_api_token_refuses_a_duplicate_name(db):
    first = run("create_api_token", "twice")[0].strip()

    with pytest.raises(CommandError, match="already exists"):
        run("create_api_token", "twice")

    assert ApiToken.objects.filter(name="twice").count() == 1
    assert authenticate_token(first) is not None


@pytest.mark.django_db(transaction=True)
def test_create_api_token_with_a_duplicate_name_exits_non_zero():
    run("create_api_token", "taken")
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for(settings.DATABASES["default"]["NAME"]),
    }
    env.pop("SIGNALBOX_TEST_DB_NAME", None)

    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "taken"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode != 0
    assert "already exists" in result.stderr
    assert result.stdout.strip() == ""
    assert ApiToken.objects.filter(name="taken").count() == 1


# --- bootstrap ----------------------------------------------------------------------------------
@pytest.fixture
def no_password_env(monkeypatch):
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    monkeypatch.delenv("SIGNALBOX_ADMIN", raising=False)


def snapshot() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "groups": Group.objects.count(),
        "workflows": Workflow.objects.count(),
        "versions": WorkflowVersion.objects.count(),
    }


def test_bootstrap_creates_the_roles_an_admin_and_the_demo_workflow(db, no_password_env):
    out, _err = run("bootstrap")

    assert set(Group.objects.values_list("name", flat=True)) >= set(ROLES)
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and role_of(admin) == "admin"
    assert admin.groups.filter(name="admin").exists()
    demo = Workflow.objects.get(slug="demo-order-placed")
    assert demo.published_version is not None and demo.published_version.number == 1
    password = re.search(r"with password (\S+)", out).group(1)
    assert authenticate(username="admin", password=password) == admin


def test_bootstrap_is_idempotent_and_shows_the_password_only_once(db, no_password_env):
    first, _ = run("bootstrap")
    before = snapshot()
    hashed = get_user_model().objects.get(username="admin").password

    second, _ = run("bootstrap")

    assert "password" in first
    assert "password" not in second.lower()
    assert snapshot() == before
    assert get_user_model().objects.get(username="admin").password == hashed


def test_bootstrap_uses_django_superuser_password(client, db, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "correct horse battery staple")

    out, _ = run("bootstrap", "--no-demo")

    assert "correct horse" not in out
    assert not Workflow.objects.exists()
    assert client.login(username="admin", password="correct horse battery staple")
    assert client.get("/runs/").status_code == 200


def test_bootstrap_does_not_change_an_existing_admin_password_without_being_asked(
    db, no_password_env
):
    get_user_model().objects.create_superuser("admin", "", "chosen-by-the-operator")

    out, _ = run("bootstrap", "--no-demo")

    assert "password" not in out.lower()
    assert authenticate(username="admin", password="chosen-by-the-operator") is not None
    assert get_user_model().objects.count() == 1
