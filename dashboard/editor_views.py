"""The visual workflow editor: the canvas page and the server-rendered panels around it.

The browser holds the definition being edited (static/js/editor.js) and sends it whole:
to autosave it as the draft, and with every panel request (`definition`), so a panel is
always rendered from what is on the canvas. Panels are htmx partials; forms answer with
out-of-band fragments (field errors) and an `HX-Trigger` event carrying what the canvas
should apply, so the page never reloads and the canvas stays the one writer of the draft.

Two pages may edit the same draft. The page knows the draft revision it holds
(`draftRevision`) and sends it with every write: autosave as `baseRevision` in its JSON
body, the htmx panels that write the draft (publish, try, restore, import) as the
`X-Draft-Revision` header. A write based on an older revision is refused with 409 (JSON
problem details for autosave; for a panel, the panel saying who saved last and when, and an
`editor:conflict` event) and the page offers to reload or to overwrite (`force`).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import BadRequest, PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from workflows import selectors
from workflows.api.bodies import BodyTooLarge, read_limited
from workflows.api.problems import problem as problem_details
from workflows.dashboard_selectors import hidden_workflow_ids
from workflows.definition import InvalidDefinition, Problem
from workflows.definition_files import UnreadableDefinition
from workflows.events.envelope import InvalidEvent, loads_json
from workflows.models import Event, EventType, Run, Webhook, Workflow, WorkflowVersion
from workflows.roles import role_of
from workflows.services import drafts
from workflows.services.definitions import manual_event_type
from workflows.services.schemas import SchemaViolation
from workflows.steps import registry

from . import editor_forms as forms
from .access import role_required

MAX_DEFINITION_BYTES = 1024 * 1024


# --- access --------------------------------------------------------------------------------
def _workflow(request, slug: str, *, edit: bool = False) -> Workflow:
    workflow = get_object_or_404(
        Workflow.objects.select_related("team", "published_version"), slug=slug
    )
    if not drafts.may_view(request.user, workflow):
        raise Http404("no such workflow")
    if edit and not drafts.may_edit(request.user, workflow):
        raise PermissionDenied("changing a workflow needs the editor role")
    return workflow


def _posted_definition(request, workflow: Workflow) -> dict:
    """The definition on the canvas, sent with the request; the stored draft without it."""
    text = request.POST.get("definition")
    if text is None:
        return copy.deepcopy(workflow.draft)
    try:
        raw = loads_json(text.encode("utf-8", "surrogatepass"), what="definition")
    except InvalidEvent as exc:
        raise BadRequest(str(exc)) from exc
    if not isinstance(raw, dict):
        raise BadRequest("the definition is a JSON object")
    return raw


def _index(request, items: list) -> int:
    try:
        index = int(request.POST.get("index", request.GET.get("index", "")))
    except ValueError as exc:
        raise BadRequest("index is a number") from exc
    if not 0 <= index < len(items):
        raise Http404("no such node")
    return index


def _with_trigger(
    response: HttpResponse, name: str, detail: dict, more: dict | None = None
) -> HttpResponse:
    """Send the event `name` to the page (and the events in `more`, after it)."""
    response["HX-Trigger"] = json.dumps({name: detail, **(more or {})})
    return response


# --- who saved the draft last: revisions and conflicts -------------------------------------
def _base_revision(request) -> int | None:
    """The draft revision the page's write is based on (none: write whatever is stored)."""
    value = request.headers.get("X-Draft-Revision", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise BadRequest("X-Draft-Revision is a revision number") from exc


def _client(request) -> str:
    """The editor page that writes (it recognises its own saves among the socket's)."""
    return request.headers.get("X-Editor-Client", "")[:64]


def _draft_state(workflow: Workflow) -> dict[str, Any]:
    return {
        "revision": workflow.draft_revision,
        "savedBy": workflow.draft_updated_by,
        "savedAt": workflow.updated_at.isoformat(),
    }


def _draft_written(
    request, template: str, context: dict, workflow: Workflow, more: dict | None = None
) -> HttpResponse:
    """A panel that wrote the draft (even when it refused the rest of what was asked):
    `editor:draft` tells the page the revision it now holds, then the events in `more`."""
    response = render(request, template, context)
    return _with_trigger(response, "editor:draft", _draft_state(workflow), more)


def _conflict_panel(
    request, template: str, context: dict, conflict: drafts.DraftConflict
) -> HttpResponse:
    """A panel refused because the draft changed: 409, the panel naming who saved last and
    when, and `editor:conflict` for the canvas to offer reload or overwrite."""
    context["conflict"] = conflict
    response = render(request, template, context, status=409)
    return _with_trigger(response, "editor:conflict", conflict.as_dict())


def _username(request) -> str:
    return request.user.get_username()


# --- pages ---------------------------------------------------------------------------------
@role_required("editor")
@require_http_methods(["GET", "POST"])
def new_workflow(request):
    """Start a workflow on an empty canvas, or from a definition file."""
    teams = _teams_for(request.user)
    context: dict[str, Any] = {"teams": teams, "values": request.POST, "errors": [], "problems": []}
    if request.method == "POST":
        slug = request.POST.get("slug", "").strip()
        team = next((t for t in teams if str(t.pk) == request.POST.get("team")), None)
        upload = request.FILES.get("file")
        try:
            if upload is not None:
                if Workflow.objects.filter(slug=slug).exists():
                    raise drafts.DraftRefused(
                        f"a workflow {slug!r} already exists; open it "
                        f"and import there to replace its draft"
                    )
                result = _import_upload(request, slug, upload, new=True)
                if team is not None:
                    result.workflow.team = team
                    result.workflow.save(update_fields=["team"])
            else:
                drafts.create_workflow(
                    slug=slug, name=request.POST.get("name", ""), by=_username(request), team=team
                )
        except (drafts.DraftRefused, UnreadableDefinition) as exc:
            context["errors"] = [str(exc)]
        except InvalidDefinition as exc:
            context["problems"] = exc.problems
        else:
            return redirect("dashboard:editor", slug=slug)
    return render(request, "dashboard/editor_new.html", context)


def _teams_for(user) -> list[Group]:
    """Groups that are not roles: the teams a workflow can belong to (admins: every team)."""
    from workflows.roles import ROLES

    groups = Group.objects.exclude(name__in=ROLES).order_by("name")
    if role_of(user) != "admin":
        groups = groups.filter(user=user)
    return list(groups)


@role_required("viewer")
@require_GET
def editor(request, slug: str):
    workflow = _workflow(request, slug)
    can_edit = drafts.may_edit(request.user, workflow)
    draft = workflow.draft if isinstance(workflow.draft, dict) else {}
    problems = drafts.check_draft(draft)
    palette = forms.palette()
    base = reverse("dashboard:editor", kwargs={"slug": slug})
    config = {
        "slug": slug,
        "canEdit": can_edit,
        "draft": draft,
        "problems": [p.as_dict() for p in problems],
        "nodes": drafts.node_problems(draft, problems).as_json(),
        "ports": {str(i): drafts.ports_of(s) for i, s in enumerate(draft.get("steps") or [])},
        "kinds": {k["kind"]: k for g in palette["groups"] for k in g["kinds"]},
        "triggerKinds": {t["kind"]: t for t in palette["triggers"]},
        "urls": {name: base + suffix for name, suffix in URL_SUFFIXES.items()},
        "csrf": get_token(request),
        "publishedVersion": (
            workflow.published_version.number if workflow.published_version else None
        ),
        "savedBy": workflow.draft_updated_by,
        "savedAt": workflow.updated_at.isoformat(),
        "draftRevision": workflow.draft_revision,
    }
    return render(
        request,
        "dashboard/editor.html",
        {
            "workflow": workflow,
            "can_edit": can_edit,
            "palette": palette,
            "editor_config": config,
            "known_event_types": EventType.objects.order_by("name").values_list("name", flat=True),
            "known_webhooks": Webhook.objects.order_by("slug").values_list("slug", flat=True),
        },
    )


# --- autosave ------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
def draft(request, slug: str):
    """GET: the stored draft (what Reload shows after a conflict); POST: autosave."""
    return current_draft(request, slug) if request.method == "GET" else save(request, slug)


@role_required("viewer")
def current_draft(request, slug: str):
    workflow = _workflow(request, slug)
    raw = workflow.draft if isinstance(workflow.draft, dict) else {}
    problems = drafts.check_draft(raw)
    return JsonResponse(
        {
            "definition": raw,
            **_draft_state(workflow),
            "problems": [p.as_dict() for p in problems],
            "nodes": drafts.node_problems(raw, problems).as_json(),
        }
    )


@role_required("editor")
def save(request, slug: str):
    """Store the canvas as the draft, valid or not; answer with its problems per node.

    The body is {"definition", "revision" (the page's own edit counter, echoed),
    "baseRevision" (the draft revision the canvas holds), "force", "client"}. A base that
    is not the stored revision is refused with 409 unless `force`."""
    workflow = _workflow(request, slug, edit=True)
    try:
        body = loads_json(read_limited(request, MAX_DEFINITION_BYTES))
    except BodyTooLarge as exc:
        return JsonResponse({"error": str(exc)}, status=413)
    except InvalidEvent as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if not isinstance(body, dict):
        body = {}
    raw = body.get("definition")
    base = body.get("baseRevision")
    if base is not None and (not isinstance(base, int) or isinstance(base, bool)):
        return JsonResponse({"error": "baseRevision is a revision number"}, status=400)
    try:
        problems = drafts.save_draft(
            workflow=workflow,
            raw=raw,
            by=_username(request),
            base_revision=base,
            force=body.get("force") is True,
            client=str(body.get("client") or "")[:64],
        )
    except drafts.DraftRefused as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except drafts.DraftConflict as exc:
        return problem_details(
            409,
            "The draft was changed by someone else",
            f"{exc.message}. Reload to see their version, or save again with force to "
            "overwrite it.",
            kind="draft-conflict",
            **exc.as_dict(),
        )
    return JsonResponse(
        {
            "revision": body.get("revision"),
            "draftRevision": workflow.draft_revision,
            "savedAt": workflow.updated_at.isoformat(),
            "savedBy": workflow.draft_updated_by,
            "problems": [p.as_dict() for p in problems],
            "nodes": drafts.node_problems(raw, problems).as_json(),
            "ports": {str(i): drafts.ports_of(s) for i, s in enumerate(raw.get("steps") or [])},
        }
    )


# --- the step panel --------------------------------------------------------------------------
def _step_context(
    workflow: Workflow,
    raw: dict,
    index: int,
    *,
    can_edit: bool,
    parse_errors: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    steps = raw.get("steps") or []
    step = steps[index] if isinstance(steps[index], dict) else {}
    problems = drafts.check_draft(raw)
    by_field, general = forms.field_problems(problems, f"/steps/{index}")
    for key, messages in (parse_errors or {}).items():
        by_field[key] = messages + by_field.get(key, [])
    kind = registry.all_kinds().get(step.get("kind"))
    return {
        "workflow": workflow,
        "index": index,
        "step": step,
        "kind": kind,
        "icon": forms.icon_svg(kind.icon if kind else ""),
        "step_fields": forms.step_fields(step, by_field),
        "config_fields": forms.config_fields(
            str(step.get("kind")), step.get("config"), forms.config_errors(by_field)
        ),
        "general": general,
        "ports": drafts.ports_of(step),
        "variables": forms.step_variables(workflow.slug, raw, index),
        "can_edit": can_edit,
    }


@role_required("viewer")
@require_POST
def step_panel(request, slug: str):
    workflow = _workflow(request, slug)
    raw = _posted_definition(request, workflow)
    index = _index(request, raw.get("steps") or [])
    context = _step_context(workflow, raw, index, can_edit=drafts.may_edit(request.user, workflow))
    return render(request, "dashboard/_editor_step.html", context)


@role_required("editor")
@require_POST
def step_apply(request, slug: str):
    """Read the step form: answer with its field errors (out of band) and, in HX-Trigger,
    the step as the canvas should now hold it."""
    workflow = _workflow(request, slug, edit=True)
    raw = _posted_definition(request, workflow)
    steps = raw.get("steps") or []
    index = _index(request, steps)
    previous = steps[index] if isinstance(steps[index], dict) else {}
    others = {s.get("id") for i, s in enumerate(steps) if i != index and isinstance(s, dict)}
    step, parse_errors = forms.parse_step(request.POST, previous, others)
    updated = copy.deepcopy(raw)
    updated["steps"][index] = step
    renamed = None
    if step.get("id") != previous.get("id"):
        renamed = [previous.get("id"), step.get("id")]
        _rename(updated, *renamed)
    context = _step_context(workflow, updated, index, can_edit=True, parse_errors=parse_errors)
    response = render(request, "dashboard/_editor_apply.html", context)
    return _with_trigger(
        response,
        "editor:apply",
        {
            "what": "step",
            "index": index,
            "id": previous.get("id"),
            "step": step,
            "renamed": renamed,
        },
    )


def _rename(raw: dict, old: str, new: str) -> None:
    for step in raw.get("steps") or []:
        if isinstance(step, dict) and isinstance(step.get("after"), list):
            step["after"] = [new if a == old else a for a in step["after"]]
    for edge in raw.get("edges") or []:
        if isinstance(edge, dict):
            for end in ("from", "to"):
                if edge.get(end) == old:
                    edge[end] = new


# --- the trigger panel ---------------------------------------------------------------------
def _trigger_context(workflow: Workflow, raw: dict, index: int, *, can_edit: bool):
    trigger = (raw.get("triggers") or [])[index]
    problems = drafts.check_draft(raw)
    by_field, general = forms.field_problems(problems, f"/triggers/{index}")
    kind = forms.trigger_kind(trigger)
    return {
        "workflow": workflow,
        "index": index,
        "trigger": trigger,
        "trigger_kind": next(t for t in forms.TRIGGER_KINDS if t["kind"] == kind),
        "icon": forms.icon_svg(next(t["icon"] for t in forms.TRIGGER_KINDS if t["kind"] == kind)),
        "fields": forms.trigger_fields(trigger, by_field),
        "general": general,
        "variables": forms.event_variables(workflow.slug, raw, only_trigger=index),
        "manual_type": manual_event_type(workflow.slug),
        "can_edit": can_edit,
    }


@role_required("viewer")
@require_POST
def trigger_panel(request, slug: str):
    workflow = _workflow(request, slug)
    raw = _posted_definition(request, workflow)
    index = _index(request, raw.get("triggers") or [])
    return render(
        request,
        "dashboard/_editor_trigger.html",
        _trigger_context(workflow, raw, index, can_edit=drafts.may_edit(request.user, workflow)),
    )


@role_required("editor")
@require_POST
def trigger_apply(request, slug: str):
    workflow = _workflow(request, slug, edit=True)
    raw = _posted_definition(request, workflow)
    triggers = raw.get("triggers") or []
    index = _index(request, triggers)
    trigger = forms.parse_trigger(triggers[index], request.POST)
    updated = copy.deepcopy(raw)
    updated["triggers"][index] = trigger
    context = _trigger_context(workflow, updated, index, can_edit=True)
    context["config_fields"], context["step_fields"] = context["fields"], []
    response = render(request, "dashboard/_editor_apply.html", context)
    return _with_trigger(
        response, "editor:apply", {"what": "trigger", "index": index, "trigger": trigger}
    )


# --- the workflow's own settings -----------------------------------------------------------
def _settings_fields(raw: dict, by_field: dict[str, list[str]]) -> list[forms.FormField]:
    concurrency = raw.get("concurrency") if isinstance(raw.get("concurrency"), dict) else {}
    return [
        forms.FormField(
            name="workflow.name",
            label="Name",
            widget="text",
            required=True,
            value=str(raw.get("name", "")),
            errors=by_field.get("name", []),
        ),
        forms.FormField(
            name="workflow.description",
            label="Description",
            widget="textarea",
            value=str(raw.get("description", "") or ""),
            errors=by_field.get("description", []),
        ),
        forms.FormField(
            name="workflow.vars",
            label="Vars (JSON object)",
            widget="json",
            value=(json.dumps(raw["vars"], indent=2, ensure_ascii=False) if "vars" in raw else ""),
            help="constants that expressions read as vars.<name>",
            errors=by_field.get("vars", []),
        ),
        forms.FormField(
            name="workflow.max_runs",
            label="At most this many runs at once",
            widget="number",
            value=str(concurrency.get("max_runs", "") or ""),
            placeholder="no limit",
            errors=by_field.get("concurrency", []),
        ),
        forms.FormField(
            name="workflow.ordered",
            label="Runs of the same key one after another",
            widget="checkbox",
            checked=bool(concurrency.get("ordered")),
        ),
    ]


def _settings_problems(raw: dict, extra: dict[str, list[str]] | None = None):
    by_field: dict[str, list[str]] = {k: list(v) for k, v in (extra or {}).items()}
    for problem in drafts.check_draft(raw):
        parts = problem.path.strip("/").split("/")
        if parts[0] in ("name", "description", "vars", "concurrency"):
            by_field.setdefault(parts[0], []).append(problem.message)
    return by_field


@role_required("viewer")
@require_POST
def settings_panel(request, slug: str):
    workflow = _workflow(request, slug)
    raw = _posted_definition(request, workflow)
    return render(
        request,
        "dashboard/_editor_settings.html",
        {
            "workflow": workflow,
            "fields": _settings_fields(raw, _settings_problems(raw)),
            "can_edit": drafts.may_edit(request.user, workflow),
        },
    )


@role_required("editor")
@require_POST
def settings_apply(request, slug: str):
    workflow = _workflow(request, slug, edit=True)
    raw = _posted_definition(request, workflow)
    post = request.POST
    updated = copy.deepcopy(raw)
    errors: dict[str, list[str]] = {}
    updated["name"] = post.get("workflow.name", "")
    description = post.get("workflow.description", "")
    if description.strip():
        updated["description"] = description
    else:
        updated.pop("description", None)
    text = post.get("workflow.vars", "")
    if text.strip():
        try:
            updated["vars"] = json.loads(text)
        except ValueError as exc:
            errors["vars"] = [f"not valid JSON: {exc}"]
    else:
        updated.pop("vars", None)
    concurrency: dict[str, Any] = {}
    if post.get("workflow.max_runs", "").strip():
        try:
            concurrency["max_runs"] = int(post["workflow.max_runs"])
        except ValueError:
            errors["concurrency"] = ["enter a whole number"]
    if "workflow.ordered" in post:
        concurrency["ordered"] = True
    if concurrency:
        updated["concurrency"] = concurrency
    else:
        updated.pop("concurrency", None)
    fields = _settings_fields(updated, _settings_problems(updated, errors))
    response = render(
        request,
        "dashboard/_editor_apply.html",
        {"config_fields": fields, "step_fields": [], "general": []},
    )
    settings = {k: updated.get(k) for k in ("name", "description", "vars", "concurrency")}
    return _with_trigger(response, "editor:apply", {"what": "workflow", "settings": settings})


# --- expressions as you type ---------------------------------------------------------------
@role_required("viewer")
@require_POST
def check(request, slug: str):
    """Check one field as typed: `field` names it, `mode` is "expression" or "template"."""
    _workflow(request, slug)
    name = request.POST.get("field", "")
    errors = forms.check_field(request.POST.get(name, ""), request.POST.get("mode", ""))
    return render(
        request,
        "dashboard/_editor_check.html",
        {
            "errors": errors,
            "text": request.POST.get(name, ""),
            "mode": request.POST.get("mode"),
        },
    )


# --- versions, diff, restore ---------------------------------------------------------------
@role_required("viewer")
@require_GET
def versions(request, slug: str):
    workflow = _workflow(request, slug)
    return render(request, "dashboard/_editor_versions.html", _versions_context(request, workflow))


def _versions_context(request, workflow: Workflow) -> dict[str, Any]:
    found = drafts.published_versions(workflow)
    return {
        "workflow": workflow,
        "versions": found,
        "can_edit": drafts.may_edit(request.user, workflow),
        "live": workflow.published_version.number if workflow.published_version else None,
        "default_from": found[1].number if len(found) > 1 else (found[0].number if found else ""),
        "default_to": found[0].number if len(found) > 1 else "draft",
    }


@role_required("viewer")
@require_GET
def diff(request, slug: str):
    workflow = _workflow(request, slug)
    refs = (request.GET.get("from", ""), request.GET.get("to", "draft"))
    try:
        before, after = (drafts.definition_at(workflow, ref) for ref in refs)
    except (WorkflowVersion.DoesNotExist, ValueError) as exc:
        raise Http404("no such version") from exc
    return render(
        request,
        "dashboard/_editor_diff.html",
        {
            "workflow": workflow,
            "label_from": _label(refs[0]),
            "label_to": _label(refs[1]),
            "diff": drafts.diff_definitions(before, after),
        },
    )


def _label(ref: str) -> str:
    return "the draft" if ref in ("", "draft") else f"v{ref}"


@role_required("editor")
@require_POST
def restore(request, slug: str, number: int):
    workflow = _workflow(request, slug, edit=True)
    try:
        draft = drafts.restore_version(
            workflow=workflow,
            number=number,
            by=_username(request),
            base_revision=_base_revision(request),
            client=_client(request),
        )
    except WorkflowVersion.DoesNotExist as exc:
        raise Http404("no such version") from exc
    except drafts.DraftConflict as exc:
        return _conflict_panel(
            request, "dashboard/_editor_versions.html", _versions_context(request, workflow), exc
        )
    problems = drafts.check_draft(draft)
    context = _versions_context(request, workflow)
    context["message"] = f"v{number} restored into the draft. Publish to make it live."
    return _draft_written(
        request,
        "dashboard/_editor_versions.html",
        context,
        workflow,
        {
            "editor:reload": {
                "definition": draft,
                "message": context["message"],
                "problems": [p.as_dict() for p in problems],
                "nodes": drafts.node_problems(draft, problems).as_json(),
                "draftRevision": workflow.draft_revision,
            }
        },
    )


# --- publish -------------------------------------------------------------------------------
@role_required("viewer")
@require_http_methods(["GET", "POST"])
def publish(request, slug: str):
    workflow = _workflow(request, slug, edit=request.method == "POST")
    context: dict[str, Any] = {
        "workflow": workflow,
        "can_edit": drafts.may_edit(request.user, workflow),
    }
    if request.method == "GET":
        return render(request, "dashboard/_editor_publish.html", context)
    raw = _posted_definition(request, workflow)
    note = request.POST.get("note", "")
    try:
        version = drafts.publish_draft(
            workflow=workflow,
            by=_username(request),
            note=note,
            raw=raw,
            base_revision=_base_revision(request),
            client=_client(request),
        )
    except drafts.DraftRefused as exc:
        context["problems"] = [Problem("/", str(exc))]
    except drafts.DraftConflict as exc:
        context["note"] = note
        return _conflict_panel(request, "dashboard/_editor_publish.html", context, exc)
    except InvalidDefinition as exc:
        context["problems"] = exc.problems
        context["note"] = note
    else:
        context["published"] = version
        return _draft_written(
            request,
            "dashboard/_editor_publish.html",
            context,
            workflow,
            {"editor:published": {"version": version.number}},
        )
    # An invalid draft is still stored: the page learns its new revision.
    return _draft_written(request, "dashboard/_editor_publish.html", context, workflow)


# --- try it --------------------------------------------------------------------------------
@role_required("editor")
@require_http_methods(["GET", "POST"])
def try_it(request, slug: str):
    workflow = _workflow(request, slug, edit=True)
    raw = _posted_definition(request, workflow) if request.method == "POST" else workflow.draft
    context: dict[str, Any] = {
        "workflow": workflow,
        "samples": drafts.recent_samples(
            slug=slug, raw=raw, hidden=hidden_workflow_ids(request.user)
        ),
        "types": drafts.trigger_event_types(slug=slug, raw=raw),
        "values": request.POST,
        "errors": [],
    }
    if request.method == "GET":
        return render(request, "dashboard/_editor_try.html", context)
    sample = request.POST.get("sample", "typed")
    kwargs: dict[str, Any] = {}
    if sample != "typed":
        try:
            kwargs["event_id"] = int(sample)
        except ValueError:
            context["errors"] = ["pick an event or type one"]
    else:
        text = request.POST.get("data", "").strip()
        try:
            kwargs["data"] = json.loads(text) if text else None
        except ValueError as exc:
            context["errors"] = [f"the data is not valid JSON: {exc}"]
        kwargs["event_type"] = request.POST.get("type", "").strip()
    if context["errors"]:
        return render(request, "dashboard/_editor_try.html", context)
    try:
        run = drafts.try_draft(
            workflow=workflow,
            by=_username(request),
            raw=raw,
            base_revision=_base_revision(request),
            client=_client(request),
            hidden=hidden_workflow_ids(request.user),
            **kwargs,
        )
    except drafts.DraftConflict as exc:
        return _conflict_panel(request, "dashboard/_editor_try.html", context, exc)
    except drafts.DraftRefused as exc:
        context["errors"] = [str(exc)]
    except InvalidDefinition as exc:
        context["problems"] = exc.problems
    except Event.DoesNotExist:
        context["errors"] = ["that event is no longer stored"]
    except InvalidEvent as exc:
        context["errors"] = [f"not a valid event: {exc}"]
    except SchemaViolation as exc:
        context["errors"] = [f"the data breaks the type's schema: {exc}"]
    else:
        context["run"] = run
        return _draft_written(
            request,
            "dashboard/_editor_try.html",
            context,
            workflow,
            {"editor:show-run": {"run": run.pk, "origin": "try"}},
        )
    return _draft_written(request, "dashboard/_editor_try.html", context, workflow)


# --- runs on the canvas --------------------------------------------------------------------
@role_required("viewer")
@require_GET
def runs(request, slug: str):
    workflow = _workflow(request, slug)
    return render(
        request,
        "dashboard/_editor_runs.html",
        {
            "workflow": workflow,
            "runs": selectors.runs(workflow_slug=slug, limit=20),
        },
    )


@role_required("viewer")
@require_GET
def run_step(request, slug: str, run_id: int, step_id: str):
    workflow = _workflow(request, slug)
    run = get_object_or_404(
        Run.objects.select_related("version", "event"), pk=run_id, workflow=workflow
    )
    attempts = list(run.steps.filter(step_id=step_id).order_by("attempt", "id"))
    return render(
        request,
        "dashboard/_editor_run_step.html",
        {
            "workflow": workflow,
            "run": run,
            "step_id": step_id,
            "latest": attempts[-1] if attempts else None,
            "attempts": attempts,
        },
    )


# --- as code -------------------------------------------------------------------------------
@role_required("viewer")
@require_GET
def code(request, slug: str):
    workflow = _workflow(request, slug)
    context = _code_context(workflow, can_edit=drafts.may_edit(request.user, workflow))
    return render(request, "dashboard/_editor_code.html", context)


def _code_context(workflow: Workflow, *, can_edit: bool) -> dict[str, Any]:
    return {
        "workflow": workflow,
        "can_edit": can_edit,
        "versions": drafts.published_versions(workflow),
    }


@role_required("viewer")
@require_GET
def export(request, slug: str):
    workflow = _workflow(request, slug)
    version = request.GET.get("version") or None
    try:
        filename, text = drafts.export_definition(
            workflow=workflow,
            yaml_format=request.GET.get("format") == "yaml",
            version=int(version) if version else None,
        )
    except (WorkflowVersion.DoesNotExist, ValueError) as exc:
        raise Http404("no such version") from exc
    kind = "application/yaml" if filename.endswith(".yaml") else "application/json"
    response = HttpResponse(text, content_type=f"{kind}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _import_upload(request, slug: str, upload, *, new: bool) -> drafts.ImportResult:
    """Import an uploaded definition file (at most 1 MiB) as the draft of `slug`. A new
    workflow has no draft the page could hold an older revision of."""
    body = upload.read(MAX_DEFINITION_BYTES + 1)
    if len(body) > MAX_DEFINITION_BYTES:
        raise drafts.DraftRefused("the file is larger than 1 MiB")
    revision = {} if new else {"base_revision": _base_revision(request), "client": _client(request)}
    return drafts.import_definition(
        slug=slug,
        body=body,
        yaml_format=_is_yaml(upload.name, body),
        by=_username(request),
        **revision,
    )


def _is_yaml(filename: str, body: bytes) -> bool:
    name = (filename or "").lower()
    if name.endswith((".yaml", ".yml")):
        return True
    if name.endswith(".json"):
        return False
    return body.lstrip()[:1] not in (b"{", b"[")


@role_required("editor")
@require_POST
def import_file(request, slug: str):
    """Replace the draft with an uploaded file: all of it, or nothing when it is invalid."""
    workflow = _workflow(request, slug, edit=True)
    context = _code_context(workflow, can_edit=True)
    upload = request.FILES.get("file")
    if upload is None:
        context["import_errors"] = ["choose a JSON or YAML file"]
        return render(request, "dashboard/_editor_code.html", context)
    try:
        result = _import_upload(request, slug, upload, new=False)
    except drafts.DraftConflict as exc:
        return _conflict_panel(request, "dashboard/_editor_code.html", context, exc)
    except (drafts.DraftRefused, UnreadableDefinition) as exc:
        context["import_errors"] = [f"{upload.name}: {exc}"]
    except InvalidDefinition as exc:
        context["import_errors"] = [
            f"{upload.name}: {len(exc.problems)} problem(s); the draft was not changed"
        ]
        context["import_problems"] = exc.problems
    else:
        context["imported"] = upload.name
        return _draft_written(
            request,
            "dashboard/_editor_code.html",
            context,
            result.workflow,
            {
                "editor:reload": {
                    "definition": result.workflow.draft,
                    "problems": [],
                    "nodes": {},
                    "message": f"{upload.name} imported into the draft",
                    "draftRevision": result.workflow.draft_revision,
                }
            },
        )
    return render(request, "dashboard/_editor_code.html", context)


URL_SUFFIXES = {
    "save": "draft",
    "step": "step",
    "stepApply": "step/apply",
    "trigger": "trigger",
    "triggerApply": "trigger/apply",
    "settings": "settings",
    "settingsApply": "settings/apply",
    "check": "check",
    "versions": "versions",
    "diff": "diff",
    "publish": "publish",
    "try": "try",
    "runs": "runs",
    "runStep": "runs/",
    "code": "code",
    "export": "export",
    "import": "import",
}

_EDIT = "workflows/<slug:slug>/edit/"
urlpatterns = [
    path("workflows/new/", new_workflow, name="workflow-new"),
    path(_EDIT, editor, name="editor"),
    path(_EDIT + "draft", draft, name="editor-save"),
    path(_EDIT + "step", step_panel, name="editor-step"),
    path(_EDIT + "step/apply", step_apply, name="editor-step-apply"),
    path(_EDIT + "trigger", trigger_panel, name="editor-trigger"),
    path(_EDIT + "trigger/apply", trigger_apply, name="editor-trigger-apply"),
    path(_EDIT + "settings", settings_panel, name="editor-settings"),
    path(_EDIT + "settings/apply", settings_apply, name="editor-settings-apply"),
    path(_EDIT + "check", check, name="editor-check"),
    path(_EDIT + "versions", versions, name="editor-versions"),
    path(_EDIT + "versions/<int:number>/restore", restore, name="editor-restore"),
    path(_EDIT + "diff", diff, name="editor-diff"),
    path(_EDIT + "publish", publish, name="editor-publish"),
    path(_EDIT + "try", try_it, name="editor-try"),
    path(_EDIT + "runs", runs, name="editor-runs"),
    path(_EDIT + "runs/<int:run_id>/<str:step_id>", run_step, name="editor-run-step"),
    path(_EDIT + "code", code, name="editor-code"),
    path(_EDIT + "export", export, name="editor-export"),
    path(_EDIT + "import", import_file, name="editor-import"),
]
