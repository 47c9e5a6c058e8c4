"""A stoppable loop for long-running management commands (bus consumer, scheduler)."""

from __future__ import annotations

import signal
import threading


class Stopper:
    """Set by SIGINT/SIGTERM; `wait` sleeps until the timeout or the stop, whichever first."""

    def __init__(self) -> None:
        self._event = threading.Event()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, *_args) -> None:
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)
