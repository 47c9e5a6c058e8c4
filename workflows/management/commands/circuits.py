import redis
from django.core.management.base import BaseCommand, CommandError

from workflows.infra import circuit


class Command(BaseCommand):
    help = "Show the circuit breakers of outbound hosts, or close one by hand."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action")
        actions.add_parser("list", help="every known host: state, failures, when it opened")
        reset = actions.add_parser("reset", help="close a host's circuit and forget its failures")
        reset.add_argument("host", help="host:port as listed (a bare host resets all its ports)")

    def handle(self, *args, action=None, **options):
        try:
            if action == "reset":
                self.do_reset(options["host"])
            else:
                self.do_list()
        except redis.RedisError as exc:
            raise CommandError(f"cannot reach Redis: {exc}") from exc

    def do_list(self):
        found = circuit.circuits()
        self.stdout.write(
            f"circuits open after {circuit.failure_threshold()} failures in a row, "
            f"for {circuit.cooldown_seconds():g}s"
        )
        if not found:
            self.stdout.write("no hosts called yet")
            return
        for c in found:
            row = c.as_dict()
            detail = f"opened {row['opened_at']}" if row["opened_at"] else ""
            if c.retry_in is not None:
                detail += f", trial in {c.retry_in:.1f}s"
            if c.last_error:
                detail += f"{', ' if detail else ''}last error {c.last_error}"
            self.stdout.write(f"{c.host}\t{c.state}\tfailures {c.failures}\t{detail}".rstrip())

    def do_reset(self, host):
        reset = circuit.reset(host)
        if not reset:
            known = ", ".join(c.host for c in circuit.circuits()) or "none"
            raise CommandError(f"no circuit for {host!r} (known: {known})")
        for name in reset:
            self.stdout.write(f"reset circuit {name}: closed")
