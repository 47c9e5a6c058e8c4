import json

from django.core.management.base import BaseCommand, CommandError

from workflows.events.models import Schedule
from workflows.events.schedules import InvalidSchedule, add_schedule, describe, iso, remove_schedule


class Command(BaseCommand):
    help = "Configure schedules: cron or @every producers that emit one event per tick."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="emit an event of --type on every tick")
        add.add_argument("name")
        add.add_argument("cron", help='5-field cron ("*/5 * * * *"), @hourly, or "@every 30s"')
        add.add_argument("--type", required=True, help="the type of the events emitted")
        add.add_argument("--tz", default="UTC", help="IANA time zone for cron, e.g. Europe/Paris")
        add.add_argument("--data", default="{}", help="JSON object added to every event's data")
        add.add_argument("--disabled", action="store_true", help="save it without firing it")
        actions.add_parser("list", help="show the schedules and their next tick")
        remove = actions.add_parser("remove", help="delete a schedule")
        remove.add_argument("name")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"do_{action}")(**options)
        except InvalidSchedule as exc:
            raise CommandError(str(exc)) from exc

    def do_add(self, *, name, cron, type, tz, data, disabled, **_):
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise CommandError(f"--data is not valid JSON: {exc}") from exc
        schedule = add_schedule(
            name=name, cron=cron, event_type=type, tz_name=tz, data=payload, enabled=not disabled
        )
        self.stdout.write(
            f"added schedule {schedule.name}: {schedule.cron} ({schedule.timezone}) emits "
            f"{schedule.event_type}; next tick {describe(schedule)}"
        )

    def do_list(self, **_):
        schedules = Schedule.objects.order_by("name")
        if not schedules:
            self.stdout.write("no schedules")
        for schedule in schedules:
            last = iso(schedule.last_tick) if schedule.last_tick else "-"
            self.stdout.write(
                f"{schedule.name}\t{schedule.cron}\t{schedule.timezone}\t{schedule.event_type}"
                f"\t{'enabled' if schedule.enabled else 'disabled'}\tlast {last}"
                f"\tnext {describe(schedule) if schedule.enabled else '-'}"
            )

    def do_remove(self, *, name, **_):
        remove_schedule(name=name)
        self.stdout.write(f"removed schedule {name}")
