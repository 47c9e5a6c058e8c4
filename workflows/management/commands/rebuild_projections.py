from django.core.management.base import BaseCommand, CommandError

from workflows.runs.models import Run
from workflows.runs.projections import differences, rebuild_run


class Command(BaseCommand):
    help = "Recreate run and step rows from the runs' journals (or --check them)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--run", type=int, action="append", dest="runs", help="only this run (repeatable)"
        )
        parser.add_argument(
            "--check", action="store_true", help="report differences without writing; exit 1 if any"
        )

    def handle(self, *args, runs, check, **options):
        queryset = Run.objects.order_by("pk")
        if runs:
            queryset = queryset.filter(pk__in=runs)
            missing = set(runs) - set(queryset.values_list("pk", flat=True))
            if missing:
                raise CommandError(f"no such run(s): {sorted(missing)}")
        mismatched = 0
        for run in queryset.iterator():
            found = differences(run)
            if check:
                if found:
                    mismatched += 1
                    self.stdout.write(f"run {run.pk}:")
                    for line in found:
                        self.stdout.write(f"  {line}")
            elif found:
                rebuild_run(run)
                mismatched += 1
        verb = "differ from" if check else "rebuilt from"
        self.stdout.write(f"{mismatched} run(s) {verb} their journal")
        if check and mismatched:
            raise CommandError(f"{mismatched} run(s) differ from their journal")
