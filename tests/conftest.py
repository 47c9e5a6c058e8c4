from __future__ import annotations

import httpx
import pytest
from django.conf import settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests import db_teardown
from tests.http_recorder import Recorder
from tests.million_runs import million_runs, run_million_row_tests_last
from tests.stack import make_stack
from workflows.access.tokens import create_api_token

# Property tests judge behaviour, not speed: on a loaded 2-core CI machine generation can be
# slow, which must not fail the run.
hypothesis_settings.register_profile(
    "signalbox",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.load_profile("signalbox")

db_teardown.install()

# Registered here (one definition for every file), so the million rows are made once per
# process: tests/million_runs.py.
__all__ = ["million_runs"]


def pytest_collection_modifyitems(items):
    run_million_row_tests_last(items)


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker):
    """Every Signalbox process, running for real against this run's test database.

    Tests that use it must commit their data (`transactional_db`), since the processes
    read the database through their own connections."""
    running = make_stack(settings.DATABASES["default"]["NAME"])
    running.start_all()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture
def recorder():
    from workflows.infra import circuit

    server = Recorder()
    # Ports are recycled: a breaker left open by an earlier test on this host:port must
    # not fail this one fast.
    circuit.reset(f"127.0.0.1:{server.port}")
    yield server
    server.close()


@pytest.fixture
def api_token(transactional_db) -> str:
    _token, plaintext = create_api_token(name="tests", role="admin")
    return plaintext


@pytest.fixture
def api(stack, api_token):
    """An HTTP client for the real ASGI server, authenticated with an admin token."""
    with httpx.Client(
        base_url=stack.base_url,
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=15,
    ) as client:
        yield client
