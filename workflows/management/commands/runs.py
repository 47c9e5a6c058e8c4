import json

from django.core.management.base import BaseCommand, CommandError

from workflows.queries import runs as selectors
from workflows.runs.control import cancel_run


class Command(BaseCommand):
    help = "Inspect and cancel runs."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        show = sub.add_parser("show", help="print a run as JSON")
        show.add_argument("run_id", type=int)
        cancel = sub.add_parser("cancel", help="cancel a queued, running or waiting run")
        cancel.add_argument("run_id", type=int)
        cancel.add_argument("--reason", default="")

    def handle(self, *args, action, run_id, **options):
        run = selectors.run_detail(run_id)
        if run is None:
            raise CommandError(f"no run {run_id}")
        if action == "cancel":
            if not cancel_run(run_id=run_id, reason=options["reason"], by="cli"):
                raise CommandError(f"run {run_id} already finished ({run.status})")
            self.stdout.write(f"run {run_id} cancelled")
            return
        self.stdout.write(json.dumps(selectors.run_as_json(run), indent=2))
