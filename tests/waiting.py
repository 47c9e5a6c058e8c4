"""Wait on conditions with a timeout, never on a fixed sleep."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `condition` until it returns something truthy; return that, or fail loudly."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message}"
        + (f" (last error: {last_error!r})" if last_error else "")
    )


@contextlib.contextmanager
def stacks_on_timeout() -> Iterator[None]:
    """A wait that times out inside says where every thread of the process was: a stall in
    a client library (a reader stuck in a close) names itself in the CI log."""
    try:
        yield
    except AssertionError as exc:
        names = {t.ident: t.name for t in threading.enumerate()}
        stacks = "\n".join(
            f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
            for ident, frame in sys._current_frames().items()
        )
        raise AssertionError(f"{exc}\n{stacks}") from None
