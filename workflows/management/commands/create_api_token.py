from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from workflows.access.models import ApiToken
from workflows.access.roles import ROLES
from workflows.access.tokens import create_api_token


class Command(BaseCommand):
    help = "Create an API token and print it once (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--role", choices=ROLES, default="editor")
        parser.add_argument(
            "--team",
            default=None,
            help="the team (a group that is not a role) whose workflows the token sees, "
            "besides those of no team; without it the token sees every workflow",
        )

    def handle(self, *args, name, role, team, **options):
        if ApiToken.objects.filter(name=name).exists():
            raise CommandError(f"a token named {name!r} already exists; choose another name")
        group = None
        if team is not None:
            # A role is a group too, but no workflow belongs to it: naming one is a mistake.
            group = Group.objects.exclude(name__in=ROLES).filter(name=team).first()
            if group is None:
                known = Group.objects.exclude(name__in=ROLES).order_by("name")
                names = ", ".join(known.values_list("name", flat=True)) or "none yet"
                raise CommandError(f"no team named {team!r} (teams: {names})")
        _token, plaintext = create_api_token(name=name, role=role, team=group)
        scope = f"team {group.name}" if group else "every team"
        self.stderr.write(f"API token {name!r} ({role}, {scope}); it is shown only this once:")
        self.stdout.write(plaintext)
