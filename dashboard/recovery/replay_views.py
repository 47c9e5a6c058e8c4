"""Recovery pages: replay a run (with a preview), cancel, bulk and
shadow replays, re-drive of stored events, and the audit trail (the dead-letter queue:
dead_letter_views.py).

Reading is for viewers; every action needs the operator role (403 otherwise) and is
recorded in the audit trail by the services it calls. What belongs to another team answers 404,
as if it did not exist (403 would say that it does).

"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.access import role_required
from dashboard.recovery.access import batch_or_404, can_operate, go, require_operator, run_or_404
from workflows.access import audit
from workflows.authoring.definitions import definition_for
from workflows.catalog.models import Workflow
from workflows.core.states import TERMINAL_RUN
from workflows.queries import dashboard as ds
from workflows.queries.events import _parse_time
from workflows.recovery import replay as replays
from workflows.recovery import selectors as recovery
from workflows.recovery.redrive import EventSelection, RedriveError, redrive_events
from workflows.runs.control import cancel_run
from workflows.runs.models import Run


# --- the recovery panel on the run page ----------------------------------------------------------
@role_required("viewer")
def run_panel(request, run_id: int):
    """Actions, lineage, comparison and audit of one run. The run page loads it into its
    live section, so it is fetched again (with the viewer's role) whenever the run moves."""
    run = run_or_404(request, run_id)
    context = {
        "run": run,
        "can_operate": can_operate(request),
        "terminal": run.status in TERMINAL_RUN,
        # A fix published since the run: the replay page offers it first.
        "newer_version": _newer_version(run),
        "comparison": replays.compare_runs(run) if run.replay_of_id else [],
        "entries": recovery.audit_for_run(run),
        "letters": list(run.deadletter_set.order_by("id")),
    }
    return render(request, "dashboard/replay_run_panel.html", context)


def _newer_version(run: Run) -> int | None:
    first = replays.version_choices(run)[0]
    return first["number"] if first["value"] == replays.VERSION_LATEST else None


# --- replaying one run ---------------------------------------------------------------------------
def _replay_choices(request, run: Run) -> dict[str, Any]:
    source = request.POST if request.method == "POST" else request.GET
    default_from = replays.FROM_FAILED if run.status == "failed" else replays.FROM_START
    return {
        "from_step": source.get("from_step") or default_from,
        # A replay right after a fix wants the fix: the latest version when it is newer.
        "version": source.get("version") or replays.default_version(run),
        "renew": source.get("renew_idempotency_keys") in ("on", "true", "1"),
        "input_text": (source.get("input") or "").strip(),
        "reason": (source.get("reason") or "").strip(),
    }


def _edited_input(text: str):
    if not text:
        return replays.UNCHANGED
    try:
        return json.loads(text)
    except ValueError as exc:
        raise replays.ReplayError(f"the edited input is not JSON: {exc}", status=400) from exc


def _step_ids(run: Run, version: str) -> list[str]:
    """The steps of the version the replay runs (a chosen step must be one of them)."""
    try:
        return list(definition_for(replays.resolve_version(run, version)).steps)
    except replays.ReplayError:
        return list(definition_for(run.version).steps)


@role_required("operator")
@require_http_methods(["GET", "POST"])
def run_replay(request, run_id: int):
    run = run_or_404(request, run_id)
    choices = _replay_choices(request, run)
    plan, error, status = None, None, 200
    try:
        edited = _edited_input(choices["input_text"])
        if request.method == "POST":
            new = replays.replay_run(
                run_id=run.pk,
                actor=request.user.get_username(),
                from_step=choices["from_step"],
                version=choices["version"],
                input=edited,
                renew_idempotency_keys=choices["renew"],
                reason=choices["reason"],
            )
            messages.success(request, f"Run #{new.pk} replays run #{run.pk}.")
            return go(request, reverse("dashboard:run", args=[new.pk]))
        plan = replays.plan_replay(
            run=run,
            from_step=choices["from_step"],
            version=choices["version"],
            input=edited,
            renew_idempotency_keys=choices["renew"],
        )
    except replays.ReplayError as exc:
        error = str(exc)
        if request.method == "POST":
            status = exc.status
    context = {
        "run": run,
        "plan": plan,
        "error": error,
        # A replay that cannot start offers what can (and its Confirm stays disabled).
        "alternatives": replays.replays_that_can_start(run) if error else [],
        "choices": choices,
        "versions": replays.version_choices(run),
        "step_ids": _step_ids(run, choices["version"]),
        "original_input": json.dumps(replays.original_input(run), indent=2),
    }
    if request.htmx and request.method == "GET":
        return render(request, "dashboard/replay_preview.html", context)
    return render(request, "dashboard/replay_run.html", context, status=status)


@role_required("operator")
@require_POST
def run_cancel(request, run_id: int):
    run = run_or_404(request, run_id)
    reason = (request.POST.get("reason") or "").strip()
    if cancel_run(run_id=run.pk, reason=reason, by=request.user.get_username()):
        messages.success(request, f"Run #{run.pk} cancelled.")
    else:
        messages.error(request, f"Run #{run.pk} had already finished ({run.status}).")
    return go(request, reverse("dashboard:run", args=[run.pk]))


# --- bulk and shadow replays ---------------------------------------------------------------------
@role_required("viewer")
@require_http_methods(["GET", "POST"])
def replay_batches(request):
    source = request.POST if request.method == "POST" else request.GET
    errors: dict[str, str] = {}
    try:
        selection = recovery.parse_failed_run_filter(source)
    except recovery.InvalidFilter as exc:
        selection, errors = recovery.FailedRunFilter(), exc.errors
    hidden = ds.hidden_workflow_ids(request.user)
    matching_ids, matching = _matching_runs(selection, hidden, errors=errors)
    from_step = (source.get("from_step") or replays.FROM_FAILED).strip()
    replay_version = source.get("replay_version") or replays.VERSION_ORIGINAL
    # The dry run: which of the matching runs would start, and why the others would not.
    dry_run = (
        _dry_run(
            replays.check_bulk_replay(
                run_ids=matching_ids[: replays.MAX_BATCH],
                from_step=from_step,
                version=replay_version,
            ),
            after=source.get("checks_after") or "",
        )
        if source.get("dry_run") and not errors
        else None
    )
    if dry_run is not None and dry_run.next_after is not None:
        following = source.copy()
        following["checks_after"] = str(dry_run.next_after)
        dry_run.next_query = following.urlencode()
    if request.method == "POST" and not errors:
        require_operator(request)
        try:
            per_second = float(source.get("per_second") or replays.DEFAULT_PER_SECOND)
            batch = replays.start_bulk_replay(
                actor=request.user.get_username(),
                run_ids=matching_ids,
                selection=selection.as_json(),
                from_step=from_step,
                version=replay_version,
                renew_idempotency_keys=source.get("renew_idempotency_keys") == "on",
                per_second=per_second,
                reason=(source.get("reason") or "").strip(),
            )
        except ValueError:
            errors["per_second"] = "must be a number"
        except replays.ReplayError as exc:
            errors["selection"] = str(exc)
        else:
            return redirect("dashboard:replay-batch", batch_id=batch.pk)
    elif request.method == "POST":
        require_operator(request)
    return render(
        request,
        "dashboard/replay_batches.html",
        {
            "form": {
                name: source.get(name, "")
                for name in (
                    "workflow",
                    "version",
                    "error",
                    "after",
                    "before",
                    "per_second",
                    "reason",
                    "replay_version",
                    "renew_idempotency_keys",
                )
            },
            "from_step": from_step,
            "step_ids": _workflow_step_ids(selection.workflow),
            "dry_run": dry_run,
            "max_batch": replays.MAX_BATCH,
            "errors": errors,
            "matching": matching,
            "matching_count": len(matching_ids),
            "ticked": selection.runs,
            # Ticked runs a bulk replay does not take: not failed, already replayed, a try.
            "ticked_left_out": sorted(set(selection.runs) - set(matching_ids)),
            "batches": recovery.batches(limit=20, hidden=hidden),
            "workflow_choices": ds.workflow_choices(hidden),
            "can_operate": can_operate(request),
        },
        status=400 if errors and request.method == "POST" else 200,
    )


SHOWN = 50  # matching runs listed on the page (all of them when ticked)
CHECKS_SHOWN = 50  # a dry run's rows on one page; its counts and reasons cover every run
EXAMPLES = 10  # runs named for each reason a dry run gives


def _matching_runs(
    selection, hidden: frozenset[int], *, errors: dict[str, str]
) -> tuple[list[int], list[Run]]:
    """The ids of the failed runs a bulk replay would take (up to one over the cap), and the
    runs listed on the page: the first SHOWN (all of them when ticked). A replay and its dry
    run need only the ids: a thousand runs with their workflows and versions, to show fifty
    and a count, were most of the page's time at a million runs."""
    if errors:
        return [], []
    runs = recovery.failed_runs(selection, hidden=hidden)
    ids = list(runs.values_list("pk", flat=True)[: replays.MAX_BATCH + 1])
    shown = ids if selection.runs else ids[:SHOWN]
    return ids, list(runs.filter(pk__in=shown))


@dataclass
class DryRun:
    """What the page shows of a dry run: exact counts and reasons over every checked run,
    and one page of its rows (CHECKS_SHOWN, after `checks_after`, a run id)."""

    checked: int
    will_start: int
    will_not_start: int
    # (reason, how many runs, the first EXAMPLES run ids), the most common first
    refused: list[tuple[str, int, list[int]]]
    starting: list[tuple[str, int]]  # (what the replays do, how many)
    rows: list[replays.BulkCheck]
    before: int  # rows before this page
    after: int  # rows after it
    next_after: int | None  # the checks_after of the next page
    next_query: str = ""  # the page's query string with that checks_after


def _dry_run(checks: list[replays.BulkCheck], *, after: str) -> DryRun:
    refused: dict[str, list[int]] = {}
    starting: Counter[str] = Counter()
    for check in checks:
        if check.can:
            starting[check.why] += 1
        else:
            refused.setdefault(check.reason, []).append(check.run_id)
    start = 0
    if after.isdigit():  # checks are in run id order
        start = next((n for n, c in enumerate(checks) if c.run_id > int(after)), len(checks))
    rows = checks[start : start + CHECKS_SHOWN]
    left = len(checks) - start - len(rows)
    return DryRun(
        checked=len(checks),
        will_start=sum(starting.values()),
        will_not_start=len(checks) - sum(starting.values()),
        refused=sorted(
            ((why, len(ids), ids[:EXAMPLES]) for why, ids in refused.items()),
            key=lambda r: -r[1],
        ),
        starting=starting.most_common(),
        rows=rows,
        before=start,
        after=left,
        next_after=rows[-1].run_id if left and rows else None,
    )


def _workflow_step_ids(slug: str) -> list[str]:
    """The steps a bulk replay can start from: those of the workflow's published version."""
    workflow = (
        Workflow.objects.select_related("published_version").filter(slug=slug).first()
        if slug
        else None
    )
    if workflow is None or workflow.published_version is None:
        return []
    return list(definition_for(workflow.published_version).steps)


def batch_context(batch) -> dict[str, Any]:
    runs = recovery.batch_runs(batch)
    items = []
    for item in batch.summary.get("items", []):
        items.append({**item, "run_obj": runs.get(item.get("replay"))})
    percent = int(100 * (batch.done + batch.failed) / batch.total) if batch.total else 100
    return {
        "batch": batch,
        "items": items,
        "percent": percent,
        "outcomes": recovery.batch_outcomes(batch),
        "shadow_steps": replays.shadow_summary(batch) if batch.kind == "shadow" else [],
    }


@role_required("viewer")
def replay_batch(request, batch_id: int):
    batch = batch_or_404(request, batch_id)
    return render(
        request,
        "dashboard/replay_batch.html",
        {**batch_context(batch), "can_operate": can_operate(request)},
    )


@role_required("operator")
@require_POST
def replay_batch_cancel(request, batch_id: int):
    batch_or_404(request, batch_id)
    replays.cancel_batch(
        batch_id=batch_id,
        actor=request.user.get_username(),
        reason=(request.POST.get("reason") or "").strip(),
    )
    return go(request, reverse("dashboard:replay-batch", args=[batch_id]))


@role_required("operator")
@require_POST
def shadow_start(request):
    slug = request.POST.get("workflow", "")
    if slug in ds.hidden_slugs(ds.hidden_workflow_ids(request.user)):
        raise Http404("no such workflow")
    try:
        last = int(request.POST.get("last") or 10)
        batch = replays.start_shadow(
            workflow_slug=slug,
            last=last,
            actor=request.user.get_username(),
            reason=(request.POST.get("reason") or "").strip(),
        )
    except ValueError:
        messages.error(request, "Last must be a number of events.")
        return redirect("dashboard:replays")
    except replays.ReplayError as exc:
        messages.error(request, f"Cannot start the shadow replay: {exc}")
        return redirect("dashboard:replays")
    return redirect("dashboard:replay-batch", batch_id=batch.pk)


# --- re-drive stored events ----------------------------------------------------------------------
def _time_or_none(text: str, name: str, errors: dict[str, str]) -> datetime | None:
    if not text:
        return None
    try:
        return _parse_time(text)
    except ValueError:
        errors[name] = "must be an ISO 8601 time"
        return None


@role_required("viewer")
@require_http_methods(["GET", "POST"])
def redrive_page(request):
    source = request.POST if request.method == "POST" else request.GET
    form = {
        name: (source.get(name) or "").strip()
        for name in ("type", "source", "after", "before", "workflow", "version", "limit", "reason")
    }
    errors: dict[str, str] = {}
    plan = None
    hidden = ds.hidden_workflow_ids(request.user)
    # As the shadow replay does: another team's workflow is neither offered, previewed nor
    # delivered to.
    if form["workflow"] and form["workflow"] in ds.hidden_slugs(hidden):
        raise Http404("no such workflow")
    if form["type"] or form["workflow"] or request.method == "POST":
        after = _time_or_none(form["after"], "after", errors)
        before = _time_or_none(form["before"], "before", errors)
        limit = 100
        if form["limit"]:
            if form["limit"].isdigit():
                limit = int(form["limit"])
            else:
                errors["limit"] = "must be a whole number"
        if not errors:
            deliver = request.method == "POST"
            if deliver:
                require_operator(request)
            try:
                plan = redrive_events(
                    workflow_slug=form["workflow"],
                    selection=EventSelection(
                        type=form["type"],
                        source=form["source"],
                        after=after,
                        before=before,
                        limit=limit,
                    ),
                    version=form["version"] or "latest",
                    dry_run=not deliver,
                    actor=request.user.get_username(),
                    reason=form["reason"],
                    hidden=hidden,
                )
            except RedriveError as exc:
                errors["redrive"] = str(exc)
            else:
                if deliver:
                    messages.success(
                        request, f"{len(plan.starting)} run(s) of {plan.workflow.slug} started."
                    )
    return render(
        request,
        "dashboard/redrive.html",
        {
            "form": form,
            "errors": errors,
            "plan": plan,
            "workflow_choices": ds.workflow_choices(hidden),
            "can_operate": can_operate(request),
        },
        status=400 if errors and request.method == "POST" else 200,
    )


# --- the audit trail -----------------------------------------------------------------------------
@role_required("viewer")
def audit_list(request):
    filters = {
        name: (request.GET.get(name) or "").strip()
        for name in ("action", "actor", "target_type", "target_id")
    }
    before = request.GET.get("before_id") or ""
    # Entries about another team's workflows, runs, batches or dead letters are left out.
    page, older = recovery.visible_audit_entries(
        **filters,
        hidden=ds.hidden_workflow_ids(request.user),
        before_id=int(before) if before.isdigit() else None,
    )
    return render(
        request,
        "dashboard/audit.html",
        {
            "entries": page,
            "more": older is not None,
            "filters": filters,
            "actions": audit.ACTIONS,
            "older": older,
        },
    )
