import json

from django.core.management.base import BaseCommand, CommandError

from workflows.recovery import dead_letters as dlq
from workflows.recovery import selectors as recovery


class Command(BaseCommand):
    help = "The dead-letter queue: list, show, edit, re-drive or discard dead letters."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="open dead letters, newest first")
        listing.add_argument("--all", action="store_true", help="resolved ones too")
        listing.add_argument("--kind", choices=["step", "bus", "event"], default="")
        listing.add_argument("--limit", type=int, default=50)
        show = sub.add_parser("show", help="one dead letter as JSON")
        show.add_argument("letter_id", type=int)
        edit = sub.add_parser("edit", help="replace a dead letter's payload (audited)")
        edit.add_argument("letter_id", type=int)
        edit.add_argument("--payload", required=True, help="the new payload, a JSON object")
        edit.add_argument("--reason", default="")
        redrive = sub.add_parser("redrive", help="re-drive one or more dead letters")
        redrive.add_argument("letter_ids", type=int, nargs="+")
        redrive.add_argument("--reason", default="")
        discard = sub.add_parser("discard", help="close a dead letter without re-driving it")
        discard.add_argument("letter_id", type=int)
        discard.add_argument("--reason", required=True, help="why (required; audited)")
        for each in (edit, redrive, discard):
            each.add_argument("--as", dest="actor", default="cli", help="who is doing it")

    def handle(self, *args, action, **options):
        if action == "list":
            return self._list(options)
        if action == "show":
            found = recovery.dead_letter(options["letter_id"])
            if found is None:
                raise CommandError(f"no dead letter {options['letter_id']}")
            self.stdout.write(json.dumps(recovery.dead_letter_as_json(found), indent=2))
            return
        if action == "redrive":
            results = dlq.redrive_many(
                letter_ids=options["letter_ids"], actor=options["actor"], reason=options["reason"]
            )
            for result in results:
                if result["ok"]:
                    self.stdout.write(f"dead letter {result['id']}: {result['resolution']}")
                else:
                    self.stderr.write(f"dead letter {result['id']}: {result['error']}")
            failed = [r for r in results if not r["ok"]]
            if failed:
                raise CommandError(
                    f"{len(failed)} of {len(results)} dead letter(s) could not be re-driven"
                )
            return
        try:
            if action == "edit":
                try:
                    payload = json.loads(options["payload"])
                except ValueError as exc:
                    raise CommandError(f"--payload is not JSON: {exc}") from exc
                dlq.edit_payload(
                    letter_id=options["letter_id"],
                    payload=payload,
                    actor=options["actor"],
                    reason=options["reason"],
                )
                self.stdout.write(f"dead letter {options['letter_id']}: payload edited")
            else:
                dlq.discard(
                    letter_id=options["letter_id"], actor=options["actor"], reason=options["reason"]
                )
                self.stdout.write(f"dead letter {options['letter_id']}: discarded")
        except dlq.DeadLetterError as exc:
            raise CommandError(str(exc)) from exc

    def _list(self, options) -> None:
        if not 1 <= options["limit"] <= recovery.MAX_PAGE_SIZE:
            raise CommandError(f"--limit must be from 1 to {recovery.MAX_PAGE_SIZE}")
        page, more = recovery.dead_letters(
            state="all" if options["all"] else "open", kind=options["kind"], limit=options["limit"]
        )
        for letter in page:
            where = (
                f"run {letter.run_id} step {letter.step_id}"
                if letter.run_id
                else f"event {letter.event_id}"
                if letter.event_id
                else "-"
            )
            state = f"resolved: {letter.resolution}" if letter.resolved_at else "open"
            self.stdout.write(
                f"{letter.pk}\t{letter.kind}\t{where}\t{state}\t{letter.reason[:120]}"
            )
        if not page:
            self.stdout.write("no dead letters" if options["all"] else "no open dead letters")
        elif more:
            self.stdout.write(f"(more: raise --limit above {options['limit']})")
