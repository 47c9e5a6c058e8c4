"""Web hardening: sign-in throttling, the Content-Security-Policy, the HTTPS switch, error
answers in the caller's language (problem+json under /api/, a page elsewhere), and a denied
page logged as one line."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from tests.accounts import sign_in
from workflows.infra import redis_client

ROOT = Path(__file__).resolve().parent.parent
# Documentation addresses (RFC 5737): the throttle counts them, nothing dials them.
ATTACKER = "192.0.2.66"
ELSEWHERE = "198.51.100.7"


@pytest.fixture
def clean_login_counters():
    """The counters live in Redis under this run's prefix: leave none for later tests."""

    def wipe():
        r = redis_client.client()
        for key in r.scan_iter(match=redis_client.key("login", "*")):
            r.delete(key)

    wipe()
    yield
    wipe()


@pytest.fixture
def alice(db, clean_login_counters):
    return User.objects.create_user("alice", password="the-right-one")


def sign_in_form(username: str, password: str, *, address: str = ATTACKER, path="/login/"):
    client = Client(REMOTE_ADDR=address)
    response = client.post(path, {"username": username, "password": password})
    return client, response


def signed_in_as(client: Client, username: str) -> bool:
    return client.session.get("_auth_user_id") == str(User.objects.get(username=username).pk)


# --- sign-in throttling --------------------------------------------------------------------------
def test_forty_wrong_passwords_lock_the_account_and_the_right_one_is_then_refused(alice):
    for _ in range(40):
        _client, wrong = sign_in_form("alice", "guess")
        assert wrong.status_code in (200, 429) and not _client.session.get("_auth_user_id")

    client, right = sign_in_form("alice", "the-right-one")

    assert right.status_code == 429
    assert 0 < int(right["Retry-After"]) <= settings.SIGNALBOX_LOGIN_WINDOW_SECONDS
    assert not signed_in_as(client, "alice")
    assert "Too many failed sign-ins" in right.content.decode()


def test_the_lock_holds_for_the_account_from_any_address_and_for_the_address_on_any_account(
    alice,
):
    User.objects.create_user("bob", password="bobs")
    limit = settings.SIGNALBOX_LOGIN_FAILURES_PER_ACCOUNT
    for _ in range(limit):
        sign_in_form("alice", "guess")

    other_address, alice_elsewhere = sign_in_form("alice", "the-right-one", address=ELSEWHERE)
    bob_client, bob = sign_in_form("bob", "bobs", address=ELSEWHERE)

    assert alice_elsewhere.status_code == 429 and not signed_in_as(other_address, "alice")
    assert bob.status_code == 302 and signed_in_as(bob_client, "bob")


def test_a_password_spray_from_one_address_locks_the_address(alice):
    User.objects.create_user("carol", password="carols")
    for n in range(settings.SIGNALBOX_LOGIN_FAILURES_PER_ADDRESS):
        sign_in_form(f"user-{n}", "guess")  # a different account each time

    client, carol = sign_in_form("carol", "carols")
    elsewhere, carol_elsewhere = sign_in_form("carol", "carols", address=ELSEWHERE)

    assert carol.status_code == 429 and not signed_in_as(client, "carol")
    assert carol_elsewhere.status_code == 302 and signed_in_as(elsewhere, "carol")


def test_a_success_clears_the_accounts_count(alice):
    limit = settings.SIGNALBOX_LOGIN_FAILURES_PER_ACCOUNT
    for _ in range(limit - 1):
        sign_in_form("alice", "guess", address=ELSEWHERE)
    client, right = sign_in_form("alice", "the-right-one", address=ELSEWHERE)
    assert right.status_code == 302 and signed_in_as(client, "alice")

    for _ in range(limit - 1):
        sign_in_form("alice", "guess", address=ELSEWHERE)
    client, again = sign_in_form("alice", "the-right-one", address=ELSEWHERE)

    assert again.status_code == 302 and signed_in_as(client, "alice")


def test_the_admin_sign_in_is_throttled_too(alice):
    alice.is_staff = True
    alice.save()
    for _ in range(settings.SIGNALBOX_LOGIN_FAILURES_PER_ACCOUNT):
        sign_in_form("alice", "guess")

    client, response = sign_in_form("alice", "the-right-one", path="/admin/login/")

    assert response.status_code == 200  # the admin's form, with its own error
    assert not signed_in_as(client, "alice")


# --- Content-Security-Policy ---------------------------------------------------------------------
def csp_directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


def test_every_page_carries_a_policy_without_eval_or_inline_script(db):
    viewer = sign_in(Client(), "vera", "viewer")
    for response in (Client().get("/login/"), viewer.get("/runs/"), viewer.get("/overview/")):
        policy = csp_directives(response)
        assert policy["script-src"] == ["'self'"]
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        assert "'unsafe-eval'" not in response["Content-Security-Policy"]


def test_no_template_has_inline_script_or_eval_driven_htmx():
    offending = []
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag:
                offending.append(f"{template.name}: inline {tag}")
        if re.search(r"\shx-on[:-]|\son[a-z]+\s*=|javascript:|hx-vals=['\"]js:", text):
            offending.append(f"{template.name}: an event handler attribute or js: value")
    assert offending == []
    assert '"allowEval": false' in (ROOT / "templates" / "base.html").read_text()


# --- the HTTPS switch ----------------------------------------------------------------------------
def check_deploy(tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SIGNALBOX_HTTPS", "DJANGO_", "SIGNALBOX_HSTS"))
    }
    environment.update(
        DJANGO_SECRET_KEY="k" * 20 + "-a-long-random-looking-key-0123456789-abcdefghijklmnop",
        SIGNALBOX_VAR_DIR=str(tmp_path),
        **env,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_the_https_switch(tmp_path):
    result = check_deploy(tmp_path, SIGNALBOX_HTTPS="1")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_names_what_is_missing_without_the_https_switch(tmp_path):
    result = check_deploy(tmp_path)

    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stdout + result.stderr


def test_the_https_switch_turns_on_secure_cookies_hsts_and_the_redirect(tmp_path):
    script = (
        "from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS >= 31536000, "
        "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_PROXY_SSL_HEADER)"
    )
    environment = dict(os.environ, SIGNALBOX_HTTPS="1", SIGNALBOX_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.stdout.split() == [
        "True",
        "True",
        "True",
        "True",
        "True",
        "('HTTP_X_FORWARDED_PROTO',",
        "'https')",
    ], result.stderr


# --- errors in the caller's language -------------------------------------------------------------
def test_a_disallowed_host_gets_problem_json_under_api_and_a_page_elsewhere(db):
    client = Client(HTTP_HOST="evil.example")

    api = client.get("/api/v1/runs")
    page = client.get("/login/")

    assert api.status_code == 400
    assert api["Content-Type"] == "application/problem+json"
    assert api.json()["status"] == 400 and api.json()["title"] == "Bad request"
    assert page.status_code == 400 and "Bad request (400)" in page.content.decode()


def test_a_webhook_path_with_a_disallowed_host_gets_problem_json(db):
    response = Client(HTTP_HOST="evil.example").post("/hooks/anything", b"{}", "application/json")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"


def test_a_wrong_method_on_a_page_gets_a_page_not_an_empty_body(db):
    operator = sign_in(Client(), "otto", "operator")

    response = operator.get("/overview/demo-traffic/")

    assert response.status_code == 405
    assert "Method not allowed (405)" in response.content.decode()
    assert response["Allow"] == "POST"


def test_a_wrong_method_under_api_stays_problem_json(db):
    response = Client().delete("/api/v1/events")

    assert response.status_code in (401, 405)
    assert response["Content-Type"] == "application/problem+json"


# --- denied pages are logged in one line ---------------------------------------------------------
@pytest.fixture
def console_log():
    console = next(h for h in logging.getLogger().handlers if h.name == "console")
    stream = io.StringIO()
    previous = console.setStream(stream)
    try:
        yield stream
    finally:
        console.setStream(previous)


def test_a_denied_page_is_logged_as_one_line_without_a_traceback(db, console_log):
    viewer = sign_in(Client(), "vic", "viewer")

    refused = viewer.post("/overview/demo-traffic/", {"on": "1"})
    missing = viewer.get("/runs/987654/")
    bad_host = Client(HTTP_HOST="evil.example").get("/runs/")

    assert (refused.status_code, missing.status_code, bad_host.status_code) == (403, 404, 400)
    output = console_log.getvalue()
    assert "Forbidden (Permission denied): /overview/demo-traffic/" in output
    assert "this page needs the operator role" in output
    assert "Invalid HTTP_HOST header" in output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "/overview/demo-traffic/" in line]) == 1


# --- sockets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/ws/nothing/", "/ws/runs/not-a-number/", "/elsewhere"])
async def test_an_unknown_socket_path_is_refused_with_4404_not_a_server_error(path):
    from channels.testing import WebsocketCommunicator

    from orchestrator.asgi import application

    ws = WebsocketCommunicator(application, path, headers=[(b"origin", b"http://127.0.0.1")])

    connected, code = await ws.connect(timeout=10)

    assert (connected, code) == (False, 4404)


def test_a_form_without_its_csrf_token_gets_the_sites_403_page(alice):
    response = Client(enforce_csrf_checks=True, REMOTE_ADDR=ATTACKER).post(
        "/login/", {"username": "alice", "password": "the-right-one"}
    )

    assert response.status_code == 403
    page = response.content.decode()
    assert "Reload the page and send it again" in page
    assert 'name="htmx-config"' in page  # the site's own layout, under its CSP
