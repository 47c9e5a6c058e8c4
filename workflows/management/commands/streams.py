from django.core.management.base import BaseCommand, CommandError

from workflows.events.external_streams import (
    InvalidSource,
    add_source,
    group_status,
    redacted,
    remove_source,
)
from workflows.events.models import StreamSource


class Command(BaseCommand):
    help = "Configure the external Redis streams Signalbox ingests events from."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="read a stream that other systems XADD events to")
        add.add_argument("name")
        add.add_argument("stream", help="the Redis stream key")
        add.add_argument("--type", default="", help="event type for entries that name none")
        add.add_argument("--redis-url", default="", help="default: Signalbox's own Redis")
        add.add_argument(
            "--from-start",
            action="store_true",
            help="also ingest the entries already in the stream",
        )
        actions.add_parser("list", help="show the configured streams")
        remove = actions.add_parser("remove", help="stop reading a stream")
        remove.add_argument("name")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"do_{action}")(**options)
        except InvalidSource as exc:
            raise CommandError(str(exc)) from exc

    def do_add(self, *, name, stream, type, redis_url, from_start, **_):
        source, note = add_source(
            name=name, stream=stream, default_type=type, redis_url=redis_url, from_start=from_start
        )
        self.stdout.write(f"added stream source {source.name}: {note}")

    def do_list(self, **_):
        sources = StreamSource.objects.order_by("name")
        if not sources:
            self.stdout.write("no stream sources")
        for source in sources:
            self.stdout.write(
                f"{source.name}\t{source.stream}\t{redacted(source.redis_url) or '(own redis)'}"
                f"\ttype={source.default_type or '-'}"
                f"\t{'enabled' if source.enabled else 'disabled'}\t{group_status(source)}"
            )

    def do_remove(self, *, name, **_):
        remove_source(name=name)
        self.stdout.write(f"removed stream source {name}")
