"""Loaded first (`-p tests.env_plugin`): make plain `pytest` behave like `make test`.

`make test` (tests/runner.py) finds the services once and passes them in the environment;
when pytest is run directly, this finds or starts them here, before Django reads settings.
"""

from __future__ import annotations

import atexit
import os
import uuid

if not os.environ.get("SIGNALBOX_TEST_DB_NAME"):
    from tests.services import ensure_all

    _services = ensure_all(browser=False)
    atexit.register(_services.close)
    _run = uuid.uuid4().hex[:8]
    os.environ["DATABASE_URL"] = _services.database_url
    os.environ["REDIS_URL"] = _services.redis_url
    os.environ["SIGNALBOX_TEST_DB_NAME"] = f"test_signalbox_{_run}"
    os.environ["SIGNALBOX_REDIS_PREFIX"] = f"sbxtest-{_run}"

# Steps in tests call loopback servers that the tests start; they allowlist exactly that.
os.environ.setdefault("SIGNALBOX_OUTBOUND_ALLOW", "127.0.0.1/32")
# Running attempts beat every second, here and in the stack's workers, so the stack's
# shorter worker-lost limit (tests/stack.py) never takes a live attempt for a dead one.
os.environ.setdefault("SIGNALBOX_STEP_HEARTBEAT_SECONDS", "1")
