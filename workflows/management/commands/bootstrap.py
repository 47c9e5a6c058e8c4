"""Make a fresh installation usable: roles, a local admin, the demo workflow. Idempotent."""

import json
import os
import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from workflows.access.roles import ensure_groups
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"


class Command(BaseCommand):
    help = "Create the roles, a local admin and the demo workflows if they are missing."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("SIGNALBOX_ADMIN", "admin"))
        parser.add_argument("--no-demo", action="store_true")

    def handle(self, *args, username, no_demo, **options):
        ensure_groups()
        self._ensure_admin(username)
        if not no_demo:
            self._load_demo()

    def _ensure_admin(self, username: str) -> None:
        users = get_user_model()
        given = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        user = users.objects.filter(username=username).first()
        if user is not None:
            if given:
                user.set_password(given)
                user.save(update_fields=["password"])
            self.stdout.write(f"admin user {username!r} exists")
            return
        password = given or secrets.token_urlsafe(12)
        user = users.objects.create_superuser(username=username, email="", password=password)
        user.groups.add(Group.objects.get(name="admin"))
        if given:
            self.stdout.write(f"created admin {username!r} with DJANGO_SUPERUSER_PASSWORD")
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"created admin {username!r} with password {password} (shown only this once)"
                )
            )

    def _load_demo(self) -> None:
        for path in sorted(DEMO_DIR.glob("*.json")):
            slug = f"demo-{path.stem}"
            if Workflow.objects.filter(slug=slug).exists():
                continue
            put_workflow(slug=slug, raw=json.loads(path.read_text()))
            publish_workflow(slug=slug, note="demo", published_by="bootstrap")
            self.stdout.write(f"loaded demo workflow {slug!r}")
