from django.core.management.base import BaseCommand, CommandError

from workflows.queries.events import _parse_time
from workflows.recovery.redrive import (
    DEFAULT_LIMIT,
    LATEST,
    EventSelection,
    RedriveError,
    redrive_events,
)


class Command(BaseCommand):
    help = (
        "Deliver stored events again to a workflow (pinned version or the latest), e.g. to "
        "backfill a new workflow. --dry-run lists the runs that would start."
    )

    def add_arguments(self, parser):
        parser.add_argument("--type", required=True, help="the events' type")
        parser.add_argument("--workflow", required=True, help="the workflow to deliver to")
        parser.add_argument("--source", default="", help="only events from this source")
        parser.add_argument("--after", default="", help="received at or after (ISO 8601)")
        parser.add_argument("--before", default="", help="received before (ISO 8601)")
        parser.add_argument(
            "--pin",
            dest="pinned",
            default=LATEST,
            help='a published version number, or "latest" (default)',
        )
        parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT)
        parser.add_argument("--dry-run", action="store_true", help="start nothing")
        parser.add_argument("--reason", default="", help="why (kept in the audit trail)")
        parser.add_argument("--as", dest="actor", default="cli", help="who is doing it")

    def handle(self, *args, **options):
        times = {}
        for name in ("after", "before"):
            if options[name]:
                try:
                    times[name] = _parse_time(options[name])
                except ValueError as exc:
                    raise CommandError(f"--{name} must be an ISO 8601 time") from exc
        selection = EventSelection(
            type=options["type"], source=options["source"], limit=options["limit"], **times
        )
        try:
            plan = redrive_events(
                workflow_slug=options["workflow"],
                selection=selection,
                version=options["pinned"],
                dry_run=options["dry_run"],
                actor=options["actor"],
                reason=options["reason"],
            )
        except RedriveError as exc:
            raise CommandError(str(exc)) from exc
        verb = "would start" if plan.dry_run else "started"
        for delivery in plan.deliveries:
            if delivery.starts:
                target = f"run {delivery.run}" if delivery.run else "a run"
                self.stdout.write(
                    f"event {delivery.event.pk} ({delivery.event.ce_id}): {verb} {target}"
                )
            else:
                self.stdout.write(
                    f"event {delivery.event.pk} ({delivery.event.ce_id}): "
                    f"not started, {delivery.why}"
                )
        self.stdout.write(
            f"{len(plan.starting)} run(s) of {plan.workflow.slug} "
            f"v{plan.version.number} {verb} from {len(plan.deliveries)} event(s)"
        )
