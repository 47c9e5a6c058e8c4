"""Browser fixtures: Debian's headless Chromium against the real stack (tests/stack.py).

Every test here is marked `browser` and runs in its own pytest process
(`python -m tests.runner --only browser`), because pytest-playwright's event loop breaks
pytest-asyncio tests that run after it in the same process.
"""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page

from tests.browser.helpers import PASSWORD, Gate, log_in
from tests.services import CHROMIUM

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def pytest_configure(config):
    # pytest-playwright's own fallback `base_url` fixture triggers this pytest deprecation;
    # it is theirs to fix and says nothing about our tests.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Session-scoped fixtures defined as instance methods"
        ":pytest.PytestRemovedIn10Warning",
    )


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # Browser downloads fail on these machines: drive the distribution's Chromium.
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": CHROMIUM_ARGS,
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args, stack):
    return {**browser_context_args, "base_url": stack.base_url}


@pytest.fixture(autouse=True)
def _sync_orm_beside_playwright(stack, monkeypatch):
    """Playwright's sync API runs its event loop on this thread, so Django refuses ORM
    calls from the test as "async unsafe". They are plain synchronous calls: allow them in
    this process only. Requesting `stack` first keeps the variable out of the environment
    the real server processes were started with."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def make_user(transactional_db):
    """Create a user holding `role` (a Django group, see workflows/roles.py), or none."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from workflows.roles import ensure_groups

    def make(role: str | None = "viewer"):
        ensure_groups()
        user = get_user_model().objects.create_user(
            username=f"{role or 'nobody'}-{uuid.uuid4().hex[:6]}", password=PASSWORD
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def viewer_page(page: Page, make_user) -> Page:
    """A page signed in through the login form as a user with the viewer role."""
    log_in(page, make_user("viewer").username)
    return page


@pytest.fixture
def gate():
    server = Gate(status=400)
    yield server
    server.close()
