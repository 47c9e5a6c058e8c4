"""Logging filters named in settings.LOGGING."""

from __future__ import annotations

import logging


class OneLineClientErrors(logging.Filter):
    """A refused request (403, 404, a DisallowedHost 400 …) is the client's doing, not a bug:
    Django logs it with the exception attached, which prints a full traceback per denied page.
    Keep one line, with the reason, and leave 5xx records (real errors) untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if record.exc_info and status is not None and status < 500:
            exc = record.exc_info[1]
            message = record.getMessage()
            reason = str(exc) if exc is not None else ""
            record.msg = f"{message} ({reason})" if reason and reason not in message else message
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True
