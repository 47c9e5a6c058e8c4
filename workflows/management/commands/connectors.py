import json

from django.core.management.base import BaseCommand, CommandError

from workflows.events.connections import (
    add_connection,
    describe,
    remove_connection,
    update_connection,
)
from workflows.events.connectors.base import InvalidConnection
from workflows.events.models import Connection


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--options is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CommandError("--options is a JSON object")
    return value


class Command(BaseCommand):
    help = "Configure the broker connections (RabbitMQ, NATS JetStream, MQTT) events come in from."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="read events from a broker")
        add.add_argument("name")
        add.add_argument("kind", help="amqp, nats or mqtt")
        add.add_argument("url", help="e.g. amqp://127.0.0.1:5672/%%2F (no password in it)")
        add.add_argument("--options", default="{}", help="JSON object, see docs/connectors.md")
        add.add_argument("--type", default="", help="event type for messages that name none")
        add.add_argument("--username", default="")
        add.add_argument("--password-secret", default="", help="name of the secret to use")
        add.add_argument("--disabled", action="store_true")
        actions.add_parser("list", help="show the connections and their health")
        for action in ("enable", "disable", "remove"):
            actions.add_parser(action).add_argument("name")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"do_{action}")(**options)
        except InvalidConnection as exc:
            raise CommandError(str(exc)) from exc
        except Connection.DoesNotExist as exc:
            raise CommandError(str(exc)) from exc

    def do_add(self, *, name, kind, url, options, type, username, password_secret, disabled, **_):
        connection = add_connection(
            name=name,
            kind=kind,
            url=url,
            options=json_object(options),
            default_type=type,
            username=username,
            password_secret=password_secret,
            enabled=not disabled,
        )
        self.stdout.write(
            f"added connection {connection.name} ({connection.kind}); the bus consumer "
            "starts reading it within seconds"
        )

    def do_list(self, **_):
        rows = Connection.objects.order_by("name")
        if not rows:
            self.stdout.write("no connections")
        for row in rows:
            info = describe(row)
            health = info["health"]
            line = (
                f"{row.name}\t{row.kind}\t{row.url}\t{json.dumps(row.options)}\t{health['state']}"
            )
            if health["last_error"]:
                when = health["last_error_at"]
                line += f"\tlast error {when:%Y-%m-%d %H:%M:%S}: " if when else "\tlast error: "
                line += health["last_error"]
            self.stdout.write(line)

    def do_enable(self, *, name, **_):
        update_connection(name=name, enabled=True)
        self.stdout.write(f"enabled connection {name}")

    def do_disable(self, *, name, **_):
        update_connection(name=name, enabled=False)
        self.stdout.write(f"disabled connection {name}")

    def do_remove(self, *, name, **_):
        remove_connection(name=name)
        self.stdout.write(f"removed connection {name}")
