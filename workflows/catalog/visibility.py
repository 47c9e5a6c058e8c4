"""Who sees which workflow: a workflow restricted to a team is seen by its members and by
admins; an API token of a team sees what a member of that team sees. Read by the pages, the
API's authorization and the selectors that filter by it.
"""

from __future__ import annotations

from workflows.access.roles import has_role
from workflows.catalog.models import Workflow


# --- who sees what -------------------------------------------------------------------------
def sees_every_workflow(user) -> bool:
    return bool(getattr(user, "is_superuser", False)) or has_role(user, "admin")


def _restricted_to_others(teams) -> frozenset[int]:
    """Workflows restricted to a team not among `teams` (group ids or a group queryset)."""
    restricted = Workflow.objects.exclude(team=None)
    if teams is not None:
        restricted = restricted.exclude(team__in=teams)
    return frozenset(restricted.values_list("id", flat=True))


def hidden_workflow_ids(user) -> frozenset[int]:
    """Workflows restricted to a team the user is not in (admins see everything)."""
    if sees_every_workflow(user):
        return frozenset()
    return _restricted_to_others(
        user.groups.all() if getattr(user, "is_authenticated", False) else None
    )


def hidden_for_team(team_id: int | None) -> frozenset[int]:
    """What an API token of team `team_id` may not see: workflows restricted to another
    team, the rule a team member meets in the dashboard. A token of no team sees every
    workflow (tokens predate teams; an installation without teams must not change)."""
    if team_id is None:
        return frozenset()
    return _restricted_to_others([team_id])


def can_see_workflow(user, workflow: Workflow | None) -> bool:
    if workflow is None or workflow.team_id is None or sees_every_workflow(user):
        return True
    return user.groups.filter(pk=workflow.team_id).exists()


# The run list's workflow picker lists at most this many; with more, it is a text field
# (a page must not grow with the number of workflows: 10,000 <option>s are read on every
# page load and no one scrolls through them).
WORKFLOW_CHOICES = 200


def workflow_choices(hidden: frozenset[int] = frozenset()) -> list[str] | None:
    """The slugs of the workflows one may pick in the run list, or None when there are more
    than WORKFLOW_CHOICES (one bounded query of slugs, never whole workflows)."""
    workflows = Workflow.objects.order_by("slug")
    if hidden:
        workflows = workflows.exclude(id__in=sorted(hidden))
    slugs = list(workflows.values_list("slug", flat=True)[: WORKFLOW_CHOICES + 1])
    return None if len(slugs) > WORKFLOW_CHOICES else slugs


def hidden_slugs(hidden: frozenset[int]) -> frozenset[str]:
    if not hidden:
        return frozenset()
    return frozenset(Workflow.objects.filter(id__in=hidden).values_list("slug", flat=True))
