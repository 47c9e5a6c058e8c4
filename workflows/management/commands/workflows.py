"""Workflows as files, for keeping them in git.

    python manage.py workflows export SLUG PATH [--yaml] [--version N]
    python manage.py workflows import PATH [--slug SLUG] [--publish] [--note TEXT]

`export` writes the draft (or a published version) as JSON, or YAML with --yaml or a
.yaml/.yml PATH; PATH "-" writes to standard output. `import` reads JSON or YAML (by the
file's extension, else by its first character) into the workflow's draft, creating the
workflow if needed (slug: --slug, else the file name without its extension); --publish
makes it the live version in the same transaction. An invalid file is refused with every
problem and its JSON pointer, the exit status is non-zero, and nothing changes. So is a
--publish of a file every run of which would hit a problem (a read of a missing step, an
address the outbound guard refuses: workflows/authoring/preflight.py), as the editor and the
API refuse to publish it; without --publish the draft is stored and those problems are
printed as a warning.
"""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from workflows.authoring import drafts
from workflows.authoring.definition_files import UnreadableDefinition
from workflows.authoring.definitions import RunsWouldFail
from workflows.authoring.preflight import run_problems
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.definition import InvalidDefinition

MAX_BYTES = 1024 * 1024


def is_yaml(path: Path, body: bytes) -> bool:
    if path.suffix.lower() in (".yaml", ".yml"):
        return True
    if path.suffix.lower() == ".json":
        return False
    return body.lstrip()[:1] not in (b"{", b"[")


def problem_lines(problems: list[dict]) -> str:
    return "\n".join(
        f"  step {p['step']!r} {p['path']}: {p['message']}"
        if p.get("step")
        else f"  {p['path']}: {p['message']}"
        for p in problems
    )


class Command(BaseCommand):
    help = "Export a workflow to a JSON/YAML file, or import one (see docs/editor.md)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="write a workflow's definition to a file")
        export.add_argument("slug")
        export.add_argument("path", help='the file to write, or "-" for standard output')
        export.add_argument("--yaml", action="store_true", help="YAML instead of JSON")
        export.add_argument("--version", type=int, help="a published version instead of the draft")
        imp = sub.add_parser("import", help="read a definition file into a workflow's draft")
        imp.add_argument("path", help='the file to read, or "-" for standard input')
        imp.add_argument("--slug", help="the workflow's slug (default: the file's name)")
        imp.add_argument("--publish", action="store_true", help="publish it as the live version")
        imp.add_argument("--note", default="", help="the version's note, with --publish")

    def handle(self, *args, action, **options):
        if action == "export":
            self.export(options["slug"], options["path"], options["yaml"], options["version"])
        else:
            self.import_(options["path"], options["slug"], options["publish"], options["note"])

    def export(self, slug: str, path: str, yaml_format: bool, version: int | None) -> None:
        workflow = Workflow.objects.filter(slug=slug).first()
        if workflow is None:
            raise CommandError(f"no workflow {slug!r}")
        target = Path(path)
        yaml_format = yaml_format or target.suffix.lower() in (".yaml", ".yml")
        try:
            _name, text = drafts.export_definition(
                workflow=workflow, yaml_format=yaml_format, version=version
            )
        except WorkflowVersion.DoesNotExist as exc:
            raise CommandError(f"{slug} has no published version {version}") from exc
        if path == "-":
            self.stdout.write(text, ending="")
            return
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror}") from exc
        which = f"v{version}" if version is not None else "the draft"
        self.stdout.write(f"{slug} ({which}) written to {path}")

    def import_(self, path: str, slug: str | None, publish: bool, note: str) -> None:
        source = Path(path)
        try:
            body = sys.stdin.buffer.read(MAX_BYTES + 1) if path == "-" else source.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        if len(body) > MAX_BYTES:
            raise CommandError(f"{path} is larger than {MAX_BYTES} bytes")
        slug = slug or (source.stem if path != "-" else "")
        if not slug:
            raise CommandError("name the workflow with --slug when reading standard input")
        try:
            result = drafts.import_definition(
                slug=slug,
                body=body,
                yaml_format=is_yaml(source, body),
                by="cli",
                publish=publish,
                note=note,
            )
        except UnreadableDefinition as exc:
            raise CommandError(f"{path}: {exc}; nothing was changed") from exc
        except drafts.DraftRefused as exc:
            raise CommandError(f"{exc}; pass --slug") from exc
        except RunsWouldFail as exc:
            raise CommandError(
                f"{path} was not published: every run would hit {len(exc.errors)} "
                f"problem(s); nothing was changed:\n{problem_lines(exc.errors)}"
            ) from exc
        except InvalidDefinition as exc:
            lines = "\n".join(f"  {p.path}: {p.message}" for p in exc.problems)
            raise CommandError(
                f"{path} is not a valid workflow definition ({len(exc.problems)} problem(s)); "
                f"nothing was changed:\n{lines}"
            ) from exc
        verb = "created" if result.created else "updated"
        message = f"{slug}: draft {verb} from {path}"
        if result.version is not None:
            message += f"; published as v{result.version.number}"
        self.stdout.write(message)
        # The draft is kept, but the editor, the API and --publish refuse to publish it.
        if problems := run_problems(result.workflow.draft):
            self.stderr.write(
                f"warning: publishing {slug} would be refused: every run would hit "
                f"{len(problems)} problem(s):\n{problem_lines(problems)}"
            )
