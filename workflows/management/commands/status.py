"""`manage.py status`: is this installation doing its work? For people and health checks.

Exit codes: 0 ok; 1 degraded (working, but something needs a look: no scheduler, a queue
no worker serves, lag or backlog past a limit, an open circuit breaker); 2 down (no
database, no Redis, no Celery worker, no bus consumer or no web process); 3 a wrong
option. The rules are in workflows/operations/system_status.py; docs/operations.md shows
them in use.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from workflows.operations import system_status
from workflows.operations.system_status import DEGRADED, DOWN, OK

USAGE_ERROR = 3
MARKS = {OK: "ok  ", DEGRADED: "WARN", DOWN: "DOWN"}


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 60:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = (
        "Processes and their heartbeats, queues, bus lag, dead letters and circuit breakers. "
        "Exit 0 ok, 1 degraded, 2 down, 3 a wrong option."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def error(message):
            # argparse exits 2 on a wrong option, which here means "down": say 3 instead.
            if not parser.called_from_command_line:
                raise CommandError(message, returncode=USAGE_ERROR)
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"status: error: {message}\n")
            raise SystemExit(USAGE_ERROR)

        parser.error = error
        return parser

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
        parser.add_argument(
            "--timeout",
            type=positive_seconds,
            default=2.0,
            help="seconds to wait for Celery workers to answer (default 2, at most 60)",
        )
        parser.add_argument(
            "--max-bus-lag",
            type=non_negative,
            default=system_status.Limits.max_bus_lag,
            help="bus entries not yet read beyond which the state is degraded (default 10000)",
        )
        parser.add_argument(
            "--max-queue-depth",
            type=non_negative,
            default=None,
            help="messages waiting in any one queue beyond which the state is degraded",
        )
        parser.add_argument(
            "--max-dead-letters",
            type=non_negative,
            default=None,
            help="dead letters waiting beyond which the state is degraded (default: not judged)",
        )

    def handle(self, *args, **options):
        report = system_status.assess(
            limits=system_status.Limits(
                max_bus_lag=options["max_bus_lag"],
                max_queue_depth=options["max_queue_depth"],
                max_dead_letters=options["max_dead_letters"],
            ),
            timeout=options["timeout"],
        )
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self.write_text(report)
        raise SystemExit(report.exit_code)

    def write_text(self, report: system_status.Report) -> None:
        self.stdout.write(f"Signalbox is {report.status}")
        width = max(len(c.name) for c in report.checks)
        for check in report.checks:
            self.stdout.write(f"  {MARKS[check.level]}  {check.name:<{width}}  {check.detail}")
        for process in report.facts.get("web", []):
            self.stdout.write(
                f"  web {process['name']}: pid {process['pid']}, up {process['uptime']} s, "
                f"heartbeat {process['seconds_ago']} s ago"
            )
        for worker in report.facts.get("workers", []):
            self.stdout.write(
                f"  worker {worker['name']}: pid {worker['pid']}, "
                f"queues {', '.join(worker['queues']) or '-'}, {worker['active']} active, "
                f"{worker['processed']} done"
            )
