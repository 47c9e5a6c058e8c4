"""Transactional tests end with a TRUNCATE of every table, while the session's stack
(worker, bus consumer, scheduler) may still hold locks on some of them. PostgreSQL then can
pick the TRUNCATE as a deadlock victim; one failed flush leaves rows behind that fail every
later test. The flush is one transaction, so trying it again is safe."""

from __future__ import annotations

import time

from django.test import TransactionTestCase

ATTEMPTS = 6


def _is_lock_conflict(exc: BaseException | None) -> bool:
    while exc is not None:
        text = str(exc).lower()
        if "deadlock detected" in text or "could not obtain lock" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def install() -> None:
    original = TransactionTestCase._fixture_teardown
    if getattr(original, "retries_lock_conflicts", False):
        return

    def fixture_teardown(self):
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return original(self)
            except Exception as exc:
                if attempt == ATTEMPTS or not _is_lock_conflict(exc):
                    raise
                time.sleep(0.2 * attempt)  # back off; the other side finishes its transaction

    fixture_teardown.retries_lock_conflicts = True
    TransactionTestCase._fixture_teardown = fixture_teardown
