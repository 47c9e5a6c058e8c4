import getpass
import sys

from django.core.management.base import BaseCommand, CommandError

from workflows.events.envelope import InvalidEvent, loads_json, path_segment
from workflows.events.manual_events import send_manual_event
from workflows.events.schemas import SchemaViolation


def default_source() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. an arbitrary container uid)
        user = "unknown"
    return f"/signalbox/cli/{path_segment(user)}"


class Command(BaseCommand):
    help = (
        "Send one event through the ingest service (same validation and schema check as "
        "HTTP) and print its store id."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "event_type", metavar="TYPE", help="the event type, e.g. com.example.order.placed"
        )
        parser.add_argument(
            "--data",
            default=None,
            help="the event data as JSON; '-' reads it from stdin; omit for no data",
        )
        parser.add_argument(
            "--source", default=None, help="default: /signalbox/cli/<your login name>"
        )
        parser.add_argument("--subject", default="")
        parser.add_argument(
            "--id",
            dest="event_id",
            default=None,
            help="the CloudEvent id (default: a new UUID); resending an id "
            "from the same source is a duplicate",
        )
        parser.add_argument(
            "--ext",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="an extension attribute, e.g. --ext partitionkey=order-7 (repeatable)",
        )

    def handle(self, *args, event_type, data, source, subject, event_id, ext, **options):
        raw = sys.stdin.read() if data == "-" else data
        try:
            payload = None if raw is None else loads_json(raw.encode(), what="--data")
            event, created = send_manual_event(
                event_type=event_type,
                data=payload,
                source=source or default_source(),
                subject=subject,
                event_id=event_id,
                extensions=self._extensions(ext),
            )
        except InvalidEvent as exc:
            raise CommandError(f"invalid event: {exc}") from exc
        except SchemaViolation as exc:
            raise CommandError(f"schema violation: {exc}") from exc
        described = f"{event.type} {event.source}#{event.ce_id}"
        if created:
            self.stdout.write(f"stored event {event.pk}: {described}")
        else:
            self.stdout.write(f"duplicate: event {event.pk} was already stored: {described}")

    @staticmethod
    def _extensions(pairs: list[str]) -> dict[str, str]:
        extensions = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep:
                raise CommandError(f"--ext takes NAME=VALUE, got {pair!r}")
            extensions[name.strip()] = value
        return extensions
