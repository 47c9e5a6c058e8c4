"""Logging for every Signalbox process, in one of two formats chosen by SIGNALBOX_LOG_FORMAT:

- `json` (production): one JSON object per line, for a log shipper to parse;
- `text` (`make run`, the default): one human-readable line per record.

Either way every record carries the ids of what the code was working on when it was
written (workflows.infra.tracing binds them: ingest, bus delivery, step attempts): `run_id`,
`step_id`, `attempt`, `event_id`, `correlation_id`, `trace_id` and `span_id`, null when
unknown. JSON records always have all seven keys; text lines show the known ones.
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from workflows.infra.tracing import log_ids

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ID_FIELDS = ("run_id", "step_id", "attempt", "event_id", "correlation_id", "trace_id", "span_id")
# Short names for text lines, in this order.
TEXT_IDS = (
    ("run_id", "run"),
    ("step_id", "step"),
    ("attempt", "attempt"),
    ("event_id", "event"),
    ("correlation_id", "correlation"),
    ("trace_id", "trace"),
)


class ContextIds(logging.Filter):
    """Put the current ids on the record (a handler filter: every record, from any logger).
    Ids a caller passed in `extra=` are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in log_ids().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonLines(JsonFormatter):
    """One JSON object per line: time, level, logger, message, the ids, then any extras."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", "time")
        super().__init__("%(levelname)s %(name)s %(message)s", *args, **kwargs)

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        for name in ID_FIELDS:  # present on every record, even one that skipped the filter
            log_data.setdefault(name, getattr(record, name, None))


class TextLines(logging.Formatter):
    """The plain line, then the known ids in brackets: `… [run=12 step=pack attempt=1]`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(TEXT_FORMAT, *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [
            f"{short}={value}"
            for name, short in TEXT_IDS
            if (value := getattr(record, name, None)) is not None
        ]
        if not known:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the line
        return f"{head} [{' '.join(known)}]{newline}{rest}"


def logging_settings(*, log_format: str, level: str) -> dict[str, Any]:
    """settings.LOGGING for the chosen format."""
    if log_format not in FORMATS:
        raise ValueError(f"SIGNALBOX_LOG_FORMAT must be json or text, not {log_format!r}")
    formatter = (
        "orchestrator.logging_config.JsonLines"
        if log_format == "json"
        else ("orchestrator.logging_config.TextLines")
    )
    console = ["console"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"signalbox": {"()": formatter}},
        "filters": {
            "one_line_client_errors": {"()": "orchestrator.log_filters.OneLineClientErrors"},
            "context_ids": {"()": "orchestrator.logging_config.ContextIds"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "signalbox",
                "filters": ["one_line_client_errors", "context_ids"],
            }
        },
        "root": {"handlers": console, "level": level},
        "loggers": {
            "django.channels.server": {"level": "WARNING"},
            "daphne": {"level": "WARNING"},
            # The web server's own records, once Django has configured logging, in the same
            # format (its handlers would otherwise write plain lines beside ours).
            "uvicorn": {"handlers": console, "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": [], "level": "INFO", "propagate": True},
            # Named so that dictConfig leaves it off: as an unnamed child of "uvicorn" it would
            # be reset to propagate, and uvicorn would log every request although started with
            # --no-access-log (a line per event, a cost the ingest benchmark sees).
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
