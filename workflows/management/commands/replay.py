import json

from django.core.management.base import BaseCommand, CommandError

from workflows.queries import runs as selectors
from workflows.recovery import replay as replays
from workflows.recovery import selectors as recovery


class Command(BaseCommand):
    help = (
        "Replay a run (from the failed step by default), preview a replay, replay every "
        "failed run matching a filter (--failed), or shadow a workflow's draft (--shadow)."
    )

    def add_arguments(self, parser):
        parser.add_argument("run_id", nargs="?", type=int, help="the run to replay")
        parser.add_argument(
            "--from-step",
            default=replays.FROM_FAILED,
            help='"failed" (default), "start", or a step id',
        )
        parser.add_argument(
            "--latest",
            action="store_true",
            help="run the latest published version, not the original's",
        )
        parser.add_argument("--input", help="edited input: JSON the steps see as event data")
        parser.add_argument(
            "--renew-keys", action="store_true", help="give re-run steps new idempotency keys"
        )
        parser.add_argument("--reason", default="", help="why (kept in the audit trail)")
        parser.add_argument(
            "--preview", action="store_true", help="show what would run again, start nothing"
        )
        parser.add_argument("--as", dest="actor", default="cli", help="who is doing it")
        bulk = parser.add_argument_group("bulk replay (--failed)")
        bulk.add_argument(
            "--failed",
            action="store_true",
            help="replay every failed run matching the filters below",
        )
        bulk.add_argument("--workflow", default="")
        bulk.add_argument(
            "--of-version", dest="of_version", default="", help="only runs of this version number"
        )
        bulk.add_argument("--error", default="", help="a piece of the run's error text")
        bulk.add_argument("--after", default="", help="finished at or after (ISO 8601)")
        bulk.add_argument("--before", default="", help="finished before (ISO 8601)")
        bulk.add_argument("--per-second", type=float, default=replays.DEFAULT_PER_SECOND)
        bulk.add_argument("--dry-run", action="store_true", help="list the runs, start none")
        shadow = parser.add_argument_group("shadow replay (--shadow WORKFLOW)")
        shadow.add_argument(
            "--shadow",
            metavar="WORKFLOW",
            default="",
            help="run the workflow's draft over its last --last events",
        )
        shadow.add_argument("--last", type=int, default=10)

    def handle(self, *args, **options):
        # Whatever the replay service refuses is the command's error: its message, exit 1.
        try:
            if options["shadow"]:
                return self._shadow(options)
            if options["failed"]:
                return self._bulk(options)
            return self._replay(options)
        except replays.ReplayError as exc:
            raise CommandError(str(exc)) from exc

    def _replay(self, options) -> None:
        if options["run_id"] is None:
            raise CommandError("name a run to replay, or use --failed or --shadow")
        edited = replays.UNCHANGED
        if options["input"] is not None:
            try:
                edited = json.loads(options["input"])
            except ValueError as exc:
                raise CommandError(f"--input is not JSON: {exc}") from exc
        version = replays.VERSION_LATEST if options["latest"] else replays.VERSION_ORIGINAL
        run = selectors.run_detail(options["run_id"])
        if run is None:
            raise CommandError(f"no run {options['run_id']}")
        plan = replays.plan_replay(
            run=run,
            from_step=options["from_step"],
            version=version,
            input=edited,
            renew_idempotency_keys=options["renew_keys"],
        )
        if options["preview"]:
            self._print_plan(plan)
            return
        new = replays.replay_run(
            run_id=run.pk,
            actor=options["actor"],
            from_step=options["from_step"],
            version=version,
            input=edited,
            renew_idempotency_keys=options["renew_keys"],
            reason=options["reason"],
        )
        self.stdout.write(
            f"replaying run {run.pk} as run {new.pk} (v{new.version.number}, status {new.status})"
        )
        self.stdout.write("reused: " + (", ".join(s.step_id for s in plan.reused) or "nothing"))
        self.stdout.write("runs again: " + ", ".join(s.step_id for s in plan.rerun))

    def _print_plan(self, plan: replays.ReplayPlan) -> None:
        self.stdout.write(
            f"replay of run {plan.original.pk} on v{plan.version.number} "
            f"from {plan.from_step}; idempotency keys "
            f"{'renewed' if plan.renew_idempotency_keys else 'reused'}"
        )
        for step in plan.steps:
            mark = " [side effects]" if step.side_effects else ""
            self.stdout.write(f"  {step.action:5} {step.step_id} ({step.kind}){mark}: {step.why}")
        for warning in plan.warnings:
            self.stdout.write(f"warning: {warning}")

    def _bulk(self, options) -> None:
        try:
            selection = recovery.parse_failed_run_filter(
                {**options, "version": options["of_version"]}
            )
        except recovery.InvalidFilter as exc:
            raise CommandError(str(exc)) from exc
        runs = list(
            recovery.failed_runs(selection).values_list("pk", flat=True)[: replays.MAX_BATCH + 1]
        )
        if options["dry_run"]:
            # Planned as the batch will plan each run: which will start, which not and why.
            checks = replays.check_bulk_replay(
                run_ids=runs[: replays.MAX_BATCH],
                from_step=options["from_step"],
                version=replays.VERSION_LATEST if options["latest"] else replays.VERSION_ORIGINAL,
            )
            for check in checks:
                verdict = "starts" if check.can else "will not start"
                self.stdout.write(
                    f"run {check.run_id} {check.workflow} v{check.version}: {check.error}"
                    f" -> {verdict}: {check.why}"
                )
            self.stdout.write(f"{len(runs)} failed run(s) would be replayed")
            started = sum(1 for c in checks if c.can)
            self.stdout.write(f"{started} would start, {len(checks) - started} would not")
            return
        batch = replays.start_bulk_replay(
            actor=options["actor"],
            run_ids=runs,
            selection=selection.as_json(),
            from_step=options["from_step"],
            version=replays.VERSION_LATEST if options["latest"] else replays.VERSION_ORIGINAL,
            renew_idempotency_keys=options["renew_keys"],
            per_second=options["per_second"],
            reason=options["reason"],
        )
        self.stdout.write(
            f"bulk replay {batch.pk}: {batch.total} run(s) queued at "
            f"{batch.options['per_second']:g}/s"
        )

    def _shadow(self, options) -> None:
        batch = replays.start_shadow(
            workflow_slug=options["shadow"],
            last=options["last"],
            actor=options["actor"],
            reason=options["reason"],
        )
        self.stdout.write(
            f"shadow replay {batch.pk}: {batch.total} event(s) through the draft "
            f"of {options['shadow']}"
        )
