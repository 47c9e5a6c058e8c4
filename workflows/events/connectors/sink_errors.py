"""How a sink says a publish did not happen: a coded error, retryable or not (kept apart
from sink.py so that sink_clients.py, which sink.py uses, can name it)."""

from __future__ import annotations


class SinkError(Exception):
    """A publish that did not happen (or was not confirmed). `code` is the step's error
    code (`<kind>.unreachable`, `<kind>.nack`, …); `retryable` whether trying again may
    succeed."""

    def __init__(self, message: str, *, code: str, retryable: bool):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


def unreachable(kind: str, exc: BaseException) -> SinkError:
    """The broker could not be reached or dropped the connection: worth another attempt."""
    return SinkError(
        f"{kind}: could not publish: {type(exc).__name__}: {exc}",
        code=f"{kind}.unreachable",
        retryable=True,
    )
