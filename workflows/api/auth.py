"""Bearer-token authentication for the API, with a role per token and, optionally, a team.

After authentication the request carries `api_token` and `hidden_workflows`: the ids of
the workflows the token may not see (those restricted to another team than the token's).
A view treats a hidden workflow, and what belongs to it, as if it did not exist."""

from __future__ import annotations

import functools

from django.views.decorators.csrf import csrf_exempt

from workflows.access import roles
from workflows.access.tokens import authenticate_token
from workflows.api.problems import problem
from workflows.catalog.models import Workflow
from workflows.catalog.visibility import hidden_for_team
from workflows.runs.models import Run


def token_required(role: str = "viewer"):
    def decorator(view):
        @csrf_exempt  # bearer tokens are not sent by browsers on their own: no CSRF risk
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                return problem(
                    401,
                    "Authentication required",
                    "send Authorization: Bearer <token>",
                    kind="unauthorized",
                )
            token = authenticate_token(credentials.strip())
            if token is None:
                return problem(
                    401, "Invalid token", "the token is unknown or revoked", kind="unauthorized"
                )
            if roles.rank(token.role) < roles.rank(role):
                return problem(403, "Forbidden", f"this needs the {role} role", kind="forbidden")
            request.api_token = token
            # Computed once per request: every view filters with it (empty: sees everything).
            request.hidden_workflows = hidden_for_team(token.team_id)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def hides(request, workflow_id: int | None) -> bool:
    """Whether the request's token may not see the workflow with this id."""
    return workflow_id is not None and workflow_id in request.hidden_workflows


def visible_workflow(request, slug: str) -> Workflow | None:
    """The workflow, or None when there is none or the request's token may not see it."""
    workflow = Workflow.objects.select_related("published_version").filter(slug=slug).first()
    return None if workflow is None or hides(request, workflow.pk) else workflow


def hides_slug(request, slug: str) -> bool:
    """Whether `slug` names a workflow the request's token may not see."""
    if not request.hidden_workflows:
        return False
    return Workflow.objects.filter(slug=slug, id__in=sorted(request.hidden_workflows)).exists()


def hides_run(request, run_id: int) -> bool:
    """Whether `run_id` is a run of a workflow the request's token may not see."""
    if not request.hidden_workflows:
        return False
    return Run.objects.filter(pk=run_id, workflow_id__in=sorted(request.hidden_workflows)).exists()


def shown_runs(request, run_ids: list[int]) -> list[int]:
    """`run_ids` without the runs of workflows the request's token may not see (a re-drive
    may start runs of every workflow the event matches)."""
    if not request.hidden_workflows or not run_ids:
        return list(run_ids)
    hidden = set(
        Run.objects.filter(
            pk__in=run_ids, workflow_id__in=sorted(request.hidden_workflows)
        ).values_list("pk", flat=True)
    )
    return [pk for pk in run_ids if pk not in hidden]
