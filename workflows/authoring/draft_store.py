"""Drafts: who may see and edit a workflow, storing its draft (valid or not, with
revisions and conflicts, see drafts.py), the problems per canvas node, and publishing,
listing and restoring versions.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from workflows.access import audit
from workflows.access.roles import has_role, role_of
from workflows.authoring.preflight import preflight
from workflows.authoring.publishing import publish_workflow
from workflows.catalog.definition_parsing import parse_definition
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.definition import InvalidDefinition, Problem
from workflows.live import notify
from workflows.steps import registry

SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")
MAX_NOTE = 500
TRY_CHANNEL = "try"
RECENT_SAMPLES = 10


class DraftRefused(ValueError):
    """A draft that cannot even be stored (not an object, text the database cannot hold)."""


class DraftConflict(Exception):
    """The draft was saved by someone else since the revision a change was based on.

    Carries who saved last and when, so the person refused can decide: look at their
    version, or overwrite it with theirs."""

    def __init__(self, *, base_revision: int, revision: int, saved_by: str, saved_at) -> None:
        self.base_revision = base_revision
        self.revision = revision
        self.saved_by = saved_by or ""
        self.saved_at = saved_at
        super().__init__(self.message)

    @property
    def who(self) -> str:
        return self.saved_by or "Someone"

    @property
    def message(self) -> str:
        at = timezone.localtime(self.saved_at).strftime("%H:%M")
        return (
            f"{self.who} changed this workflow at {at} (revision {self.revision}); "
            f"this change was based on revision {self.base_revision}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "base_revision": self.base_revision,
            "saved_by": self.saved_by,
            "saved_at": self.saved_at.isoformat(),
        }


# --- who may do what ---------------------------------------------------------------------------
def may_view(user, workflow: Workflow) -> bool:
    """Viewers see workflows; a workflow with a team is seen by its members and admins only."""
    if not has_role(user, "viewer"):
        return False
    if workflow.team_id is None or role_of(user) == "admin":
        return True
    return user.groups.filter(pk=workflow.team_id).exists()


def may_edit(user, workflow: Workflow) -> bool:
    return may_view(user, workflow) and has_role(user, "editor")


# --- drafts --------------------------------------------------------------------------------
def check_draft(raw: Any) -> list[Problem]:
    """Every problem in a definition (empty when it is valid).

    The parser checks in rounds and stops after the first that finds something, so an
    empty trigger would hide a step's missing URL. For the canvas, each step whose own
    shape is fine is then also checked on its own (its config, expressions and templates),
    so every node shows what is wrong with it at once. Last come the problems every run
    would hit although the definition is well formed (`preflight`): reads of missing steps,
    addresses the outbound guard refuses."""
    try:
        parse_definition(raw)
    except InvalidDefinition as exc:
        problems = list(exc.problems)
    else:
        return preflight(raw)
    steps = raw.get("steps") if isinstance(raw, dict) else None
    if not isinstance(steps, list):
        return problems + preflight(raw)
    flagged = {
        p.path.split("/")[2]
        for p in problems
        if p.path.startswith("/steps/") and p.path.count("/") >= 2
    }
    for index, step in enumerate(steps):
        if str(index) in flagged or not isinstance(step, dict):
            continue
        alone = {key: value for key, value in step.items() if key != "after"}
        try:
            parse_definition({"name": "step", "steps": [alone]})
        except InvalidDefinition as exc:
            problems += [
                Problem(f"/steps/{index}" + p.path[len("/steps/0") :], p.message)
                for p in exc.problems
                if p.path.startswith("/steps/0")
            ]
    return problems + preflight(raw)


def _unstorable(value: Any) -> bool:
    # PostgreSQL's jsonb holds neither NUL nor unpaired surrogates.
    if isinstance(value, str):
        return "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


def create_workflow(*, slug: str, name: str, by: str, team=None) -> Workflow:
    """A new workflow with an empty draft (no steps yet: invalid, and that is fine)."""
    if not SLUG.match(slug or ""):
        raise DraftRefused("a slug is letters, digits, '-' and '_'")
    if Workflow.objects.filter(slug=slug).exists():
        raise DraftRefused(f"a workflow {slug!r} already exists")
    name = (name or slug).strip()[:200] or slug
    return Workflow.objects.create(
        slug=slug,
        name=name,
        draft={"name": name, "triggers": [], "steps": []},
        draft_updated_by=by,
        team=team,
    )


def _conflict(current: Workflow, base_revision: int) -> DraftConflict:
    return DraftConflict(
        base_revision=base_revision,
        revision=current.draft_revision,
        saved_by=current.draft_updated_by,
        saved_at=current.updated_at,
    )


def _write_draft(
    *,
    workflow: Workflow,
    raw: dict,
    by: str,
    base_revision: int | None = None,
    force: bool = False,
    client: str = "",
) -> bool:
    """Store `raw` as the draft: the one place a draft is written. Returns whether it
    changed (a draft equal to the stored one is not a new revision).

    With `base_revision`, refuses with DraftConflict when the stored draft is another
    revision, unless `force`. Updates `workflow` to what is stored."""
    with transaction.atomic():
        # Locked so that the revision checked is the one replaced: a concurrent save of the
        # same draft waits here, then finds the revision this one wrote (a conflict),
        # instead of both passing the check and the later silently replacing the earlier.
        current = Workflow.objects.select_for_update().get(pk=workflow.pk)
        # The same content is no change whatever it was based on: nothing to lose.
        if current.draft == raw:
            _copy_draft_fields(current, workflow)
            return False
        stale = base_revision is not None and current.draft_revision != base_revision
        if stale and not force:
            raise _conflict(current, base_revision)
        replaced = (current.draft_revision, current.draft_updated_by)
        name = raw.get("name")
        if isinstance(name, str) and name.strip():
            current.name = name.strip()[:200]
        current.draft = raw
        current.draft_updated_by = (by or "")[:150]
        current.draft_revision += 1
        current.save(
            update_fields=["name", "draft", "draft_updated_by", "draft_revision", "updated_at"]
        )
        if force:
            audit.record(
                actor=by,
                action="workflow.draft_overwrite",
                target_type="workflow",
                target_id=current.slug,
                details={
                    "revision": current.draft_revision,
                    "base_revision": base_revision,
                    "overwrote_revision": replaced[0],
                    "overwrote_by": replaced[1],
                },
            )
        _draft_changed(current, client=client)
    _copy_draft_fields(current, workflow)
    return True


def _copy_draft_fields(source: Workflow, target: Workflow) -> None:
    if target is source:
        return
    for name in ("name", "draft", "draft_updated_by", "draft_revision", "updated_at"):
        setattr(target, name, getattr(source, name))


def _draft_changed(workflow: Workflow, *, client: str = "") -> None:
    notify.draft_changed(
        workflow_id=workflow.pk,
        revision=workflow.draft_revision,
        by=workflow.draft_updated_by,
        at=workflow.updated_at.isoformat(),
        client=client,
    )


def save_draft(
    *,
    workflow: Workflow,
    raw: Any,
    by: str,
    base_revision: int | None = None,
    force: bool = False,
    client: str = "",
) -> list[Problem]:
    """Store `raw` as the draft whether or not it is valid; return its problems.

    Raises DraftRefused for what cannot be stored at all, DraftConflict when
    `base_revision` is not the stored revision (and not `force`). Changes nothing that
    runs. `workflow.draft_revision` is the stored revision afterwards."""
    if not isinstance(raw, dict):
        raise DraftRefused("a workflow definition is a JSON object")
    if _unstorable(raw):
        raise DraftRefused("text cannot contain NUL characters or unpaired surrogates")
    problems = check_draft(raw)
    _write_draft(
        workflow=workflow,
        raw=raw,
        by=by,
        base_revision=base_revision,
        force=force,
        client=client,
    )
    return problems


def replace_draft(
    *,
    slug: str,
    raw: Any,
    by: str = "",
    base_revision: int | None = None,
    client: str = "",
    team=None,
) -> tuple[Workflow, bool]:
    """Create a workflow or replace its draft with a *valid* definition; (workflow, created).
    A workflow created here belongs to `team` (a Group, or None for no team); an existing
    one keeps its team.

    Raises InvalidDefinition and changes nothing; DraftConflict when the workflow exists
    and `base_revision` is not its revision (a workflow that does not exist yet has no
    revision anyone can have seen but 0)."""
    parsed = parse_definition(raw)
    with transaction.atomic():
        workflow, created = Workflow.objects.get_or_create(
            slug=slug,
            defaults={
                "name": parsed.name[:200],
                "draft": raw,
                "draft_updated_by": by[:150],
                "team": team,
            },
        )
        if created:
            if base_revision not in (None, 0):
                raise _conflict(workflow, base_revision)
            _draft_changed(workflow, client=client)
        else:
            _write_draft(
                workflow=workflow, raw=raw, by=by, base_revision=base_revision, client=client
            )
    return workflow, created


def expect_revision(*, slug: str, base_revision: int) -> Workflow:
    """Lock the workflow until the end of the transaction, refusing with DraftConflict
    when its draft is not at `base_revision`: what is published then is what was seen."""
    # Locked so that no save lands between this check and the publish that follows it in
    # the same transaction.
    current = Workflow.objects.select_for_update().get(slug=slug)
    if current.draft_revision != base_revision:
        raise _conflict(current, base_revision)
    return current


@dataclass
class NodeProblems:
    """Problems grouped by what the canvas draws: steps and triggers by their index in the
    definition, edges by their index in `edges`, the rest for the workflow as a whole."""

    steps: dict[int, list[str]] = field(default_factory=dict)
    triggers: dict[int, list[str]] = field(default_factory=dict)
    edges: dict[int, list[str]] = field(default_factory=dict)
    workflow: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "steps": {str(k): v for k, v in self.steps.items()},
            "triggers": {str(k): v for k, v in self.triggers.items()},
            "edges": {str(k): v for k, v in self.edges.items()},
            "workflow": self.workflow,
        }


def _segments(pointer: str) -> list[str]:
    if pointer in ("", "/"):
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]


def _index(segments: list[str], position: int, length: int) -> int | None:
    if len(segments) > position and segments[position].isdigit():
        index = int(segments[position])
        return index if index < length else None
    return None


def node_problems(raw: Any, problems: list[Problem]) -> NodeProblems:
    """Place each problem (by its JSON pointer) on the node it concerns."""
    raw = raw if isinstance(raw, dict) else {}
    steps = raw.get("steps") if isinstance(raw.get("steps"), list) else []
    triggers = raw.get("triggers") if isinstance(raw.get("triggers"), list) else []
    edges = raw.get("edges") if isinstance(raw.get("edges"), list) else []
    ids = {s.get("id"): i for i, s in enumerate(steps) if isinstance(s, dict)}
    out = NodeProblems()
    for problem in problems:
        parts = _segments(problem.path)
        where = "/".join(parts[2:])
        message = f"{where}: {problem.message}" if where else problem.message
        head = parts[0] if parts else ""
        if head == "steps" and (i := _index(parts, 1, len(steps))) is not None:
            out.steps.setdefault(i, []).append(message)
        elif head == "triggers" and (i := _index(parts, 1, len(triggers))) is not None:
            out.triggers.setdefault(i, []).append(message)
        elif head == "edges" and (i := _index(parts, 1, len(edges))) is not None:
            out.edges.setdefault(i, []).append(message)
            # The edge's source step shows it too: an edge is easy to miss, a node is not.
            source = edges[i].get("from") if isinstance(edges[i], dict) else None
            if source in ids:
                out.steps.setdefault(ids[source], []).append(
                    f"edge to {edges[i].get('to')}: {problem.message}"
                )
        else:
            out.workflow.append(f"{problem.path}: {problem.message}")
            if problem.message.startswith("steps form a cycle: "):
                for step_id in dict.fromkeys(problem.message.split(": ", 1)[1].split(" -> ")):
                    if step_id in ids:
                        out.steps.setdefault(ids[step_id], []).append(problem.message)
    return out


def ports_of(step: Any) -> list[str]:
    """A step's output ports, `failure` last, as far as its config allows to tell."""
    if not isinstance(step, dict):
        return ["success", "failure"]
    kind = registry.all_kinds().get(step.get("kind"))
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    try:
        ports = list(kind.ports(config)) if kind else ["success"]
    except (KeyError, TypeError, AttributeError):  # a half-written config
        ports = ["success"]
    ports = [p for p in ports if isinstance(p, str)]
    return [*dict.fromkeys(ports), "failure"]


# --- publishing and versions -----------------------------------------------------------------
def publish_draft(
    *,
    workflow: Workflow,
    by: str,
    note: str = "",
    raw: Any = None,
    base_revision: int | None = None,
    client: str = "",
) -> WorkflowVersion:
    """Publish the draft (after storing `raw` as the draft, when given).

    Raises InvalidDefinition with every problem when the draft is not valid, or when
    every run of it would fail (`preflight`); the draft is kept either way. Raises
    DraftConflict, publishing nothing, when `base_revision` is not the stored revision, or
    when someone saves between storing `raw` and publishing it: nobody publishes a draft
    they have not seen."""
    if raw is not None:
        save_draft(workflow=workflow, raw=raw, by=by, base_revision=base_revision, client=client)
        base_revision = workflow.draft_revision
    with transaction.atomic():
        if base_revision is not None:
            current = expect_revision(slug=workflow.slug, base_revision=base_revision)
        else:
            current = Workflow.objects.get(pk=workflow.pk)
        # (InvalidDefinition rolls this back; the draft stored above stays.)
        # The format is checked by publish_workflow; what runs would trip over, here.
        if preflight(current.draft):
            raise InvalidDefinition(check_draft(current.draft))
        version = publish_workflow(
            slug=workflow.slug, note=(note or "")[:MAX_NOTE], published_by=by
        )
        audit.record(
            actor=by,
            action="workflow.publish",
            target_type="workflow",
            target_id=workflow.slug,
            reason=note or "",
            details={"version": version.number},
        )
    workflow.refresh_from_db()
    return version


def published_versions(workflow: Workflow) -> list[WorkflowVersion]:
    """Newest first; draft snapshots (tries, shadows) are not versions anyone published."""
    return list(
        workflow.versions.filter(kind="published", number__isnull=False).order_by("-number")
    )


def definition_at(workflow: Workflow, ref: str | int | None) -> dict:
    """The draft (`"draft"` or None) or a published version's definition (its number).
    Raises WorkflowVersion.DoesNotExist for an unknown number."""
    if ref in (None, "", "draft"):
        return workflow.draft
    return workflow.versions.get(number=int(ref), kind="published").definition


def restore_version(
    *,
    workflow: Workflow,
    number: int,
    by: str,
    base_revision: int | None = None,
    client: str = "",
) -> dict:
    """Copy a published version into the draft (runs are unaffected until a publish).
    Raises DraftConflict when `base_revision` is not the stored revision."""
    version = workflow.versions.get(number=number, kind="published")
    with transaction.atomic():
        save_draft(
            workflow=workflow,
            raw=copy.deepcopy(version.definition),
            by=by,
            base_revision=base_revision,
            client=client,
        )
        audit.record(
            actor=by,
            action="workflow.restore",
            target_type="workflow",
            target_id=workflow.slug,
            details={"version": number},
        )
    return workflow.draft
