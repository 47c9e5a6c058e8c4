"""Recovery over the API: replay runs, the dead-letter queue, re-drive events, bulk replays,
shadow replays and the audit trail. Reading needs a viewer token; acting needs operator.

POST  /runs/<id>/replay              {"from_step": "failed"|"start"|<step>, "version":
                                      "original"|"latest", "input": …,
                                      "renew_idempotency_keys": false, "reason": "…"}
GET   /runs/<id>/replay-preview      ?from_step=&version=&renew_idempotency_keys=&input_edited=
GET   /runs/<id>/compare             the replay beside its original, step by step
GET   /dead-letters                  ?state=open|resolved|all&kind=&before_id=&limit=
GET   /dead-letters/<id>
PATCH /dead-letters/<id>             {"payload": {…}, "reason": "…"}
POST  /dead-letters/<id>/redrive     {"reason": "…", "version": …, "renew_idempotency_keys": …}
POST  /dead-letters/<id>/discard     {"reason": "…"} (required)
POST  /dead-letters/redrive          {"ids": [1, 2], "reason": "…"}
POST  /redrive                       {"type", "source", "after", "before", "limit", "workflow",
                                      "version": "latest"|<n>, "dry_run", "reason"}
POST  /replays                       {"filter": {"workflow", "version", "error", "after",
                                      "before"}, "from_step", "version", "per_second",
                                      "renew_idempotency_keys", "dry_run", "reason"}
GET   /replays/<id>                  a batch's progress and summary
POST  /workflows/<slug>/shadow       {"last": 10, "reason": "…"}
GET   /audit                         ?action=&actor=&target_type=&target_id=&before_id=
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from workflows.access import roles
from workflows.api.auth import hides, hides_run, hides_slug, shown_runs, token_required
from workflows.api.bodies import UNSTORABLE_TEXT, BodyTooLarge, read_limited, storable
from workflows.api.pagination import InvalidPage, page_params
from workflows.api.problems import problem
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.queries import runs as selectors
from workflows.recovery import dead_letters as dlq
from workflows.recovery import replay as replays
from workflows.recovery import selectors as recovery
from workflows.recovery.dead_letter_preview import preview_redrive
from workflows.recovery.redrive import EventSelection, RedriveError, redrive_events
from workflows.runs.models import Run

MAX_BODY_BYTES = 1024 * 1024
TRUE = ("1", "true", "yes", "on")


class BadBody(Exception):
    pass


def _body(request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = loads_json(read_limited(request, MAX_BODY_BYTES))
    except (BodyTooLarge, InvalidEvent) as exc:
        raise BadBody(str(exc)) from exc
    if not isinstance(body, dict):
        raise BadBody("send a JSON object")
    if not storable(body):  # payloads and inputs are stored as jsonb
        raise BadBody(UNSTORABLE_TEXT)
    return body


def _bad(detail: str, **extra):
    return problem(400, "Invalid body", detail, kind="invalid-body", **extra)


def _actor(request) -> str:
    return f"token:{request.api_token.name}"


def _needs(request, role: str):
    if roles.rank(request.api_token.role) < roles.rank(role):
        return problem(403, "Forbidden", f"this needs the {role} role", kind="forbidden")
    return None


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in TRUE


def _reason(body: dict) -> str:
    return str(body.get("reason") or "")[:2000]


def _not_found(what: str, pk: int):
    return problem(404, f"No such {what}", str(pk), kind="not-found")


# A team's token meets another team's runs, letters and workflows as if they did not exist:
# the same answer the services give for an unknown id or slug.
def _seen_letter(request, letter_id: int) -> None:
    hidden = request.hidden_workflows
    if hidden and recovery.dead_letter(letter_id, hidden=hidden) is None:
        raise dlq.DeadLetterError(f"no dead letter {letter_id}", status=404, kind="not-found")


def _redrive_seen(
    request, ids: list[int], *, reason: str, version: str = replays.VERSION_ORIGINAL
) -> list[dict[str, Any]]:
    """dlq.redrive_many over the letters the token may see; the others get the answer an
    unknown id gets, and runs started in workflows it may not see are left out."""
    hidden = request.hidden_workflows
    seen = recovery.visible_dead_letter_ids(ids, hidden=hidden) if hidden else set(ids)
    done = iter(
        dlq.redrive_many(
            letter_ids=[i for i in ids if i in seen],
            actor=_actor(request),
            reason=reason,
            version=version,
        )
    )
    results = []
    for letter_id in ids:
        if letter_id not in seen:
            results.append({"id": letter_id, "ok": False, "error": f"no dead letter {letter_id}"})
            continue
        result = next(done)
        if result["ok"]:
            result["runs"] = shown_runs(request, result["runs"])
        results.append(result)
    return results


class ReplayRefused(Exception):
    """A replay that cannot start, with the replays of the same run that can."""

    def __init__(self, error: replays.ReplayError, can_start: list[dict[str, Any]]):
        super().__init__(str(error))
        self.error = error
        self.can_start = can_start


@contextlib.contextmanager
def _offering_what_can_start(run_id: int):
    """A replay that cannot be done as asked says what can: the (from_step, version) pairs
    that would start, in the problem body's `can_start`."""
    try:
        yield
    except replays.ReplayError as exc:
        if exc.status == 404:
            raise
        run = selectors.run_detail(run_id)
        options = replays.replays_that_can_start(run) if run is not None else []
        can_start = [
            {"from_step": o["from_step"], "version": o["version"], "version_number": o["number"]}
            for o in options
        ]
        raise ReplayRefused(exc, can_start) from exc


def _replay_problem(exc: replays.ReplayError, **extra):
    titles = {404: "Not found", 400: "Invalid replay"}
    return problem(
        exc.status, titles.get(exc.status, "Cannot replay"), str(exc), kind=exc.kind, **extra
    )


def _refused_problem(exc):
    return _replay_problem(exc.error, can_start=exc.can_start)


def _dlq_problem(exc: dlq.DeadLetterError):
    titles = {404: "Not found", 400: "Invalid request"}
    return problem(exc.status, titles.get(exc.status, "Cannot do that"), str(exc), kind=exc.kind)


def _redrive_problem(exc: RedriveError):
    return problem(exc.status, "Cannot re-drive", str(exc), kind=exc.kind)


# How each refusal of a recovery service (or of the request itself) is answered. Each service
# translates the errors of the services it calls, so a view meets only its own kind.
PROBLEMS: dict[type[Exception], Callable[[Any], JsonResponse]] = {
    BadBody: lambda exc: _bad(str(exc)),
    InvalidPage: lambda exc: exc.response(),
    replays.ReplayError: _replay_problem,
    ReplayRefused: _refused_problem,
    dlq.DeadLetterError: _dlq_problem,
    RedriveError: _redrive_problem,
}


def answers_problems(view):
    """Answer the refusals in PROBLEMS as problem details, so a view reads as what it does
    when all is well."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except tuple(PROBLEMS) as exc:
            answer = next(to for kind, to in PROBLEMS.items() if isinstance(exc, kind))
            return answer(exc)

    return wrapper


def _page(request):
    return page_params(request.GET, default=recovery.PAGE_SIZE, maximum=recovery.MAX_PAGE_SIZE)


def _batch_started(batch) -> JsonResponse:
    response = JsonResponse(recovery.batch_as_json(batch), status=202)
    response["Location"] = f"/api/v1/replays/{batch.pk}"
    return response


# --- replaying one run -------------------------------------------------------------------------
@require_http_methods(["POST"])
@token_required("operator")
@answers_problems
def replay(request, run_id: int):
    body = _body(request)
    unknown = sorted(
        set(body) - {"from_step", "version", "input", "renew_idempotency_keys", "reason"}
    )
    if unknown:
        return _bad("unknown fields: " + ", ".join(unknown))
    if hides_run(request, run_id):
        raise replays.ReplayError(f"no run {run_id}", status=404, kind="not-found")
    with _offering_what_can_start(run_id):
        new = replays.replay_run(
            run_id=run_id,
            actor=_actor(request),
            from_step=str(body.get("from_step") or replays.FROM_FAILED),
            version=str(body.get("version") or replays.VERSION_ORIGINAL),
            input=body.get("input", replays.UNCHANGED),
            renew_idempotency_keys=_flag(body.get("renew_idempotency_keys")),
            reason=_reason(body),
        )
    answer = {
        **selectors.run_as_json(selectors.run_detail(new.pk)),
        "replay_of": run_id,
        "url": f"/api/v1/runs/{new.pk}",
    }
    response = JsonResponse(answer, status=201)
    response["Location"] = answer["url"]
    return response


@require_http_methods(["GET"])
@token_required("viewer")
@answers_problems
def replay_preview(request, run_id: int):
    run = selectors.run_detail(run_id)
    if run is None or hides(request, run.workflow_id):
        return _not_found("run", run_id)
    with _offering_what_can_start(run_id):
        plan = replays.plan_replay(
            run=run,
            from_step=request.GET.get("from_step") or replays.FROM_FAILED,
            version=request.GET.get("version") or replays.VERSION_ORIGINAL,
            input={"edited": True} if _flag(request.GET.get("input_edited")) else replays.UNCHANGED,
            renew_idempotency_keys=_flag(request.GET.get("renew_idempotency_keys")),
        )
    return JsonResponse(plan.as_json())


@require_http_methods(["GET"])
@token_required("viewer")
def compare(request, run_id: int):
    run = Run.objects.select_related("version", "replay_of").filter(pk=run_id).first()
    if run is None or hides(request, run.workflow_id):
        return _not_found("run", run_id)
    if run.replay_of_id is None:
        return problem(
            409, "Not a replay", f"run {run_id} replays no other run", kind="not-a-replay"
        )
    return JsonResponse(
        {
            "run": run.pk,
            "original": run.replay_of_id,
            "origin": run.origin,
            "steps": [c.as_json() for c in replays.compare_runs(run)],
        }
    )


# --- the dead-letter queue ---------------------------------------------------------------------
@require_http_methods(["GET"])
@token_required("viewer")
@answers_problems
def dead_letter_list(request):
    state = request.GET.get("state") or "open"
    if state not in ("open", "resolved", "all"):
        return problem(400, "Invalid query", "state is open, resolved or all", kind="invalid-query")
    page_at = _page(request)
    page, more = recovery.dead_letters(
        state=state,
        kind=request.GET.get("kind") or "",
        before_id=page_at.before,
        limit=page_at.limit,
        hidden=request.hidden_workflows,
    )
    body: dict[str, Any] = {
        "dead_letters": [recovery.dead_letter_as_json(x) for x in page],
        "open": recovery.open_dead_letter_count(hidden=request.hidden_workflows),
    }
    if more:
        body["next"] = f"?state={state}&before_id={page[-1].pk}&limit={page_at.limit}"
    return JsonResponse(body)


@require_http_methods(["GET", "PATCH"])
@token_required("viewer")
@answers_problems
def dead_letter(request, letter_id: int):
    if request.method == "PATCH":
        refused = _needs(request, "operator")
        if refused:
            return refused
        body = _body(request)
        if "payload" not in body:
            return _bad('send {"payload": {...}, "reason": "..."}')
        _seen_letter(request, letter_id)
        dlq.edit_payload(
            letter_id=letter_id,
            payload=body["payload"],
            actor=_actor(request),
            reason=_reason(body),
        )
    found = recovery.dead_letter(letter_id, hidden=request.hidden_workflows)
    if found is None:
        return _not_found("dead letter", letter_id)
    return JsonResponse(recovery.dead_letter_as_json(found))


@require_http_methods(["POST"])
@token_required("operator")
@answers_problems
def dead_letter_redrive(request, letter_id: int):
    body = _body(request)
    _seen_letter(request, letter_id)
    done = dlq.redrive(
        letter_id=letter_id,
        actor=_actor(request),
        reason=_reason(body),
        version=str(body.get("version") or replays.VERSION_ORIGINAL),
        renew_idempotency_keys=_flag(body.get("renew_idempotency_keys")),
    )
    return JsonResponse(
        {
            **recovery.dead_letter_as_json(recovery.dead_letter(letter_id)),
            "runs": shown_runs(request, done.runs),
            "redriven_event": done.event,
        }
    )


@require_http_methods(["POST"])
@token_required("operator")
@answers_problems
def dead_letter_discard(request, letter_id: int):
    body = _body(request)
    _seen_letter(request, letter_id)
    dlq.discard(letter_id=letter_id, actor=_actor(request), reason=_reason(body))
    return JsonResponse(recovery.dead_letter_as_json(recovery.dead_letter(letter_id)))


@require_http_methods(["POST"])
@token_required("operator")
@answers_problems
def dead_letters_redrive(request):
    body = _body(request)
    ids = body.get("ids")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        return _bad('send {"ids": [dead letter ids], "reason": "..."}')
    version = str(body.get("version") or replays.VERSION_ORIGINAL)
    if version not in (replays.VERSION_ORIGINAL, replays.VERSION_LATEST):
        return _bad('version is "original" or "latest"')
    if _flag(body.get("dry_run")):
        hidden = request.hidden_workflows
        seen = recovery.visible_dead_letter_ids(ids, hidden=hidden) if hidden else set(ids)
        previews = preview_redrive(letter_ids=ids, version=version, unknown=set(ids) - seen)
        return JsonResponse(
            {
                "dry_run": True,
                "can_redrive": sum(1 for p in previews if p.can),
                "letters": [p.as_json() for p in previews],
            }
        )
    results = _redrive_seen(request, ids, reason=_reason(body), version=version)
    status = 200 if all(r["ok"] for r in results) else 207
    return JsonResponse({"results": results}, status=status)


# --- re-driving stored events ------------------------------------------------------------------
@require_http_methods(["POST"])
@token_required("operator")
@answers_problems
def redrive(request):
    body = _body(request)
    selection = _event_selection(body)
    if not body.get("workflow"):
        return _bad("name the workflow to deliver the events to")
    if hides_slug(request, str(body["workflow"])):
        raise RedriveError(f"no workflow {body['workflow']}", status=404, kind="not-found")
    plan = redrive_events(
        workflow_slug=str(body["workflow"]),
        selection=selection,
        version=body.get("version") or "latest",
        dry_run=_flag(body.get("dry_run")),
        actor=_actor(request),
        reason=_reason(body),
        hidden=request.hidden_workflows,
    )
    return JsonResponse(plan.as_json(), status=200 if plan.dry_run else 201)


def _event_selection(body: dict) -> EventSelection:
    from workflows.queries.events import _parse_time

    values: dict[str, Any] = {
        "type": str(body.get("type") or ""),
        "source": str(body.get("source") or ""),
    }
    for name in ("after", "before"):
        if body.get(name):
            try:
                values[name] = _parse_time(str(body[name]))
            except ValueError as exc:
                raise BadBody(f"{name} must be an ISO 8601 time") from exc
    if body.get("limit") is not None:
        if not isinstance(body["limit"], int) or isinstance(body["limit"], bool):
            raise BadBody("limit must be an integer")
        values["limit"] = body["limit"]
    return EventSelection(**values)


# --- bulk replay and shadow replay ---------------------------------------------------------------
@require_http_methods(["POST"])
@token_required("operator")
@answers_problems
def bulk_replay(request):
    body = _body(request)
    raw_filter = body.get("filter") or {}
    if not isinstance(raw_filter, dict):
        return _bad('"filter" is an object: {"workflow", "version", "error", "after", "before"}')
    try:
        selection = recovery.parse_failed_run_filter(raw_filter)
    except recovery.InvalidFilter as exc:
        # A list like every other problem's `errors` (docs/api.md), one entry per field.
        errors = [{"field": name, "message": text} for name, text in exc.errors.items()]
        return _bad(str(exc), errors=errors)
    runs = recovery.failed_runs(selection, hidden=request.hidden_workflows)
    from_step = str(body.get("from_step") or replays.FROM_FAILED)
    version = str(body.get("version") or replays.VERSION_ORIGINAL)
    if _flag(body.get("dry_run")):
        # Which runs will start and which will not, and why, before anything starts.
        checks = replays.check_bulk_replay(
            run_ids=runs.values_list("pk", flat=True)[: replays.MAX_BATCH],
            from_step=from_step,
            version=version,
        )
        return JsonResponse(
            {
                "filter": selection.as_json(),
                "matched": len(checks),
                "will_start": sum(1 for c in checks if c.can),
                "will_not_start": sum(1 for c in checks if not c.can),
                "runs": [c.as_json() for c in checks],
            }
        )
    per_second = body.get("per_second", replays.DEFAULT_PER_SECOND)
    if not isinstance(per_second, int | float) or isinstance(per_second, bool):
        return _bad("per_second must be a number")
    batch = replays.start_bulk_replay(
        actor=_actor(request),
        run_ids=list(runs.values_list("pk", flat=True)[: replays.MAX_BATCH + 1]),
        selection=selection.as_json(),
        from_step=from_step,
        version=version,
        renew_idempotency_keys=_flag(body.get("renew_idempotency_keys")),
        per_second=per_second,
        reason=_reason(body),
    )
    return _batch_started(batch)


@require_http_methods(["GET"])
@token_required("viewer")
def batch(request, batch_id: int):
    found = recovery.batch(batch_id, hidden=request.hidden_workflows)
    if found is None:
        return _not_found("batch", batch_id)
    body = recovery.batch_as_json(found)
    if found.kind == "shadow":
        body["steps"] = [
            {
                "step": s.step_id,
                "compared": s.compared,
                "same": s.same,
                "differ": s.differ,
                "examples": s.examples,
            }
            for s in replays.shadow_summary(found)
        ]
    return JsonResponse(body)


@require_http_methods(["POST"])
@token_required("operator")
@answers_problems
def shadow(request, slug: str):
    body = _body(request)
    last = body.get("last", 10)
    if not isinstance(last, int) or isinstance(last, bool):
        return _bad("last must be an integer")
    if hides_slug(request, slug):
        raise replays.ReplayError(f"no workflow {slug}", status=404, kind="not-found")
    found = replays.start_shadow(
        workflow_slug=slug, last=last, actor=_actor(request), reason=_reason(body)
    )
    return _batch_started(found)


# --- the audit trail ---------------------------------------------------------------------------
@require_http_methods(["GET"])
@token_required("viewer")
@answers_problems
def audit_list(request):
    page_at = _page(request)
    # Entries about workflows the token may not see are left out; a page may then come
    # back short, and next_before_id goes on from where the reading stopped.
    page, older = recovery.visible_audit_entries(
        hidden=request.hidden_workflows,
        action=request.GET.get("action") or "",
        actor=request.GET.get("actor") or "",
        target_type=request.GET.get("target_type") or "",
        target_id=request.GET.get("target_id") or "",
        before_id=page_at.before,
        limit=page_at.limit,
    )
    body: dict[str, Any] = {"entries": [recovery.audit_as_json(e) for e in page]}
    if older is not None:
        body["next_before_id"] = older
    return JsonResponse(body)
