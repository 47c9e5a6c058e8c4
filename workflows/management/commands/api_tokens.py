"""python manage.py api_tokens list [--all] | api_tokens revoke NAME [--reason TEXT]"""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError

from workflows.access.models import ApiToken
from workflows.access.tokens import UnknownToken, revoke_api_token


class Command(BaseCommand):
    help = "List API tokens (never their secrets) and revoke them."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="{list,revoke}")
        listing = actions.add_parser("list", help="the tokens in use (--all: revoked ones too)")
        listing.add_argument("--all", action="store_true", help="include revoked tokens")
        revoke = actions.add_parser("revoke", help="revoke a token at once (audited)")
        revoke.add_argument("name")
        revoke.add_argument("--reason", default="", help="why, for the audit trail")

    def handle(self, *args, action, **options):
        if action == "list":
            self._list(include_revoked=options["all"])
        else:
            self._revoke(options["name"], options["reason"])

    def _list(self, *, include_revoked: bool) -> None:
        tokens = ApiToken.objects.select_related("team").order_by("name")
        if not include_revoked:
            tokens = tokens.filter(revoked_at__isnull=True)
        rows = [("NAME", "PREFIX", "ROLE", "TEAM", "CREATED", "LAST USED", "REVOKED")]
        for token in tokens:
            rows.append(
                (
                    token.name,
                    f"{token.prefix}…",
                    token.role,
                    token.team.name if token.team else "(every team)",
                    _when(token.created_at),
                    _when(token.last_used_at),
                    _when(token.revoked_at),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )

    def _revoke(self, name: str, reason: str) -> None:
        already = ApiToken.objects.filter(name=name, revoked_at__isnull=False).exists()
        try:
            token = revoke_api_token(name=name, actor=f"cli:{getpass.getuser()}", reason=reason)
        except UnknownToken:
            raise CommandError(f"no API token named {name!r} (see: api_tokens list)") from None
        word = "was already revoked" if already else "revoked"
        self.stdout.write(f"API token {token.name!r} ({token.prefix}…) {word}")


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"
