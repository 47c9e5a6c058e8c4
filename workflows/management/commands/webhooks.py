"""python manage.py webhooks create SLUG --type TYPE [--auth MODE] [--format F --options JSON]
| webhooks list"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from workflows.events.models import Webhook
from workflows.events.push_formats import NAMES as FORMATS
from workflows.events.webhook_auth import MODES
from workflows.events.webhooks import InvalidWebhook, create_webhook, hook_path


class Command(BaseCommand):
    help = "Create and list webhook triggers (POST /hooks/<slug>)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list}")
        create = actions.add_parser(
            "create", help="create a webhook and print its URL path and secret (shown once)"
        )
        create.add_argument("slug", help="the URL name: /hooks/<slug>")
        create.add_argument(
            "--type",
            dest="event_type",
            required=True,
            help="the CloudEvents type of the events it produces",
        )
        create.add_argument(
            "--auth",
            dest="auth_mode",
            choices=MODES,
            default="standard",
            help="how requests are authenticated (default: standard)",
        )
        create.add_argument(
            "--header-name",
            default=None,
            help="the header holding the shared secret (auth mode header)",
        )
        create.add_argument(
            "--secret-stdin",
            action="store_true",
            help="read the secret from standard input instead of generating one "
            "(kept off the command line, where ps and shell history would show it)",
        )
        create.add_argument(
            "--format",
            dest="push_format",
            choices=FORMATS,
            default="plain",
            help="how the body is read: plain (any JSON or form body) or a cloud's push format "
            "(docs/cloud-push.md)",
        )
        create.add_argument(
            "--options",
            dest="format_options",
            default=None,
            help='the push format\'s options as JSON, e.g. \'{"topic_arns": ["arn:aws:sns:..."]}\'',
        )
        actions.add_parser("list", help="list webhooks (never their secrets)")

    def handle(self, *args, action, **options):
        if action == "create":
            self._create(**options)
        else:
            self._list()

    def _create(
        self,
        *,
        slug,
        event_type,
        auth_mode,
        header_name,
        secret_stdin,
        push_format,
        format_options,
        **_,
    ):
        try:
            format_options = json.loads(format_options) if format_options else None
        except ValueError as exc:
            raise CommandError(f"--options: not JSON ({exc})") from exc
        secret = None
        if secret_stdin:
            secret = sys.stdin.readline().strip()
            if not secret:
                raise CommandError("--secret-stdin: standard input held no secret")
        try:
            webhook, plaintext = create_webhook(
                slug=slug,
                event_type=event_type,
                auth_mode=auth_mode,
                secret=secret,
                header_name=header_name,
                push_format=push_format,
                format_options=format_options,
            )
        except InvalidWebhook as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"webhook {slug!r} ({push_format}, {auth_mode}) makes {event_type} events; "
            + ("its secret is shown only this once:" if plaintext else "it has no secret.")
        )
        self.stdout.write(f"url:    {hook_path(webhook.slug)}")
        if auth_mode == "header":
            self.stdout.write(f"header: {webhook.header_name}")
        if plaintext:
            self.stdout.write(f"secret: {plaintext}")

    def _list(self):
        hooks = list(Webhook.objects.order_by("slug"))
        if not hooks:
            self.stderr.write(
                "no webhooks; create one with: manage.py webhooks create SLUG --type TYPE"
            )
            return
        rows = [("PATH", "TYPE", "FORMAT", "AUTH", "ENABLED")] + [
            (
                hook_path(h.slug),
                h.event_type,
                h.push_format,
                h.auth_mode,
                "yes" if h.enabled else "no",
            )
            for h in hooks
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
            self.stdout.write("  ".join([*cells, row[4]]))
