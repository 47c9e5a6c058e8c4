from django.core.management.base import BaseCommand, CommandError

from workflows.models import ApiToken
from workflows.roles import ROLES
from workflows.services.tokens import create_api_token


class Command(BaseCommand):
    help = "Create an API token and print it once (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--role", choices=ROLES, default="editor")

    def handle(self, *args, name, role, **options):
        if ApiToken.objects.filter(name=name).exists():
            raise CommandError(f"a token named {name!r} already exists; choose another name")
        _token, plaintext = create_api_token(name=name, role=role)
        self.stderr.write(f"API token {name!r} ({role}); it is shown only this once:")
        self.stdout.write(plaintext)
