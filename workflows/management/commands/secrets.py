"""python manage.py secrets list | create NAME | rotate NAME | delete NAME | rotate-key

A value is read from standard input when it is piped (one trailing newline dropped), else
asked for twice at a prompt that does not echo: never from the command line, where shell
history and `ps` would keep it. Every change is audited as `cli:<user>`.
"""

from __future__ import annotations

import getpass
import sys

from django.core.management.base import BaseCommand, CommandError

from workflows.access import secrets as secret_service
from workflows.access.models import Secret
from workflows.operations.key_rotation import rotate_encryption_key


class Command(BaseCommand):
    help = "Manage named secrets (values are never shown) and rotate the encryption key."
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        actions = parser.add_subparsers(
            dest="action", required=True, metavar="{list,create,rotate,delete,rotate-key}"
        )
        actions.add_parser("list", help="names, first characters and last change")
        for action, text in (
            ("create", "a new secret; the value from stdin or a prompt"),
            ("rotate", "a new value for a secret; from stdin or a prompt"),
            ("delete", "delete a secret (steps naming it then fail)"),
        ):
            actions.add_parser(action, help=text).add_argument("name")
        actions.add_parser(
            "rotate-key",
            help="re-encrypt every secret and webhook secret with the first key of "
            "SIGNALBOX_ENCRYPTION_KEY",
        )

    def handle(self, *args, action, **options):
        actor = f"cli:{getpass.getuser()}"
        try:
            if action == "list":
                self._list()
            elif action == "create":
                name = options["name"]
                secret_service.check_name(name)  # before asking for a value
                secret_service.create_secret(name=name, value=self._value(name), actor=actor)
                self.stdout.write(f"secret {name!r} created")
            elif action == "rotate":
                name = options["name"]
                if not Secret.objects.filter(name=name).exists():  # before asking for a value
                    raise secret_service.SecretError(f"no secret named {name!r}", status=404)
                secret_service.rotate_secret(name=name, value=self._value(name), actor=actor)
                self.stdout.write(f"secret {name!r} rotated")
            elif action == "delete":
                secret_service.delete_secret(name=options["name"], actor=actor)
                self.stdout.write(f"secret {options['name']!r} deleted")
            else:
                counts = rotate_encryption_key(actor=actor)
                self.stdout.write(
                    f"re-encrypted {counts['secrets']} secret(s) and {counts['webhooks']} "
                    "webhook secret(s) with the first key of SIGNALBOX_ENCRYPTION_KEY"
                )
        except secret_service.SecretError as exc:
            raise CommandError(exc.message) from None

    def _list(self) -> None:
        rows = [("NAME", "STARTS WITH", "LAST CHANGED")]
        for secret in secret_service.list_secrets():
            rows.append((secret["name"], secret["hint"] or "-", secret["updated_at"][:16]))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )

    def _value(self, name: str) -> str:
        stdin = self.stdin
        if not stdin.isatty():
            value = stdin.read()
            return value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
        try:
            value = getpass.getpass(f"value of {name}: ")
            again = getpass.getpass(f"value of {name} again: ")
        except (EOFError, KeyboardInterrupt):
            raise CommandError("no value given") from None
        if value != again:
            raise CommandError("the two values differ; nothing changed")
        return value

    def execute(self, *args, **options):
        # call_command(..., stdin=...) hands a stream in, as tests and scripts do.
        self.stdin = options.pop("stdin", sys.stdin)
        return super().execute(*args, **options)
