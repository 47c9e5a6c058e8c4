"""Editing workflows: drafts that may be invalid, versions and their diffs, trying a draft,
and definitions as files.

The visual editor saves what is on the canvas as the workflow's draft at every edit, valid or
not, and shows the problems on the nodes they concern. Only publishing needs a valid draft:
it freezes the draft into an immutable numbered version (`definitions.publish_workflow`).
Trying a draft freezes it into an unnumbered *snapshot* version and starts a run of it
directly, not through the bus, so nothing else hears about the sample event.

Two people may edit the same draft. Every write of a draft goes through `_write_draft`,
which bumps `Workflow.draft_revision`; a write that names the revision it was based on
(`base_revision`) is refused with DraftConflict when someone else saved since, instead of
silently replacing their edit. `force=True` overwrites anyway and is audited. Open editors
hear of every new revision over their socket (`notify.draft_changed`).
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import engine, notify
from ..definition import LAYOUT_KEYS, InvalidDefinition, Problem
from ..definition_files import UnreadableDefinition, dump_definition, load_definition_text
from ..event_selectors import visible_events
from ..events.envelope import path_segment, validate
from ..models import Event, Run, Webhook, Workflow, WorkflowVersion
from ..roles import has_role, role_of
from ..steps import registry
from . import audit
from .definition_parsing import parse_definition
from .event_intake import ingest_event
from .publishing import manual_event_type, publish_workflow, schedule_event_type
from .runs import advance_locked, journal

__all__ = [
    "DraftConflict",
    "DraftRefused",
    "ImportResult",
    "InvalidDefinition",
    "NodeProblems",
    "UnreadableDefinition",
    "check_draft",
    "create_workflow",
    "diff_definitions",
    "expect_revision",
    "export_definition",
    "import_definition",
    "may_edit",
    "may_view",
    "node_problems",
    "publish_draft",
    "replace_draft",
    "restore_version",
    "save_draft",
    "try_draft",
]

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
    so every node shows what is wrong with it at once."""
    try:
        parse_definition(raw)
    except InvalidDefinition as exc:
        problems = list(exc.problems)
    else:
        return []
    steps = raw.get("steps") if isinstance(raw, dict) else None
    if not isinstance(steps, list):
        return problems
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
    return problems


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

    Raises InvalidDefinition with every problem when the draft is not valid; the draft is
    kept either way. Raises DraftConflict, publishing nothing, when `base_revision` is not
    the stored revision, or when someone saves between storing `raw` and publishing it:
    nobody publishes a draft they have not seen."""
    if raw is not None:
        save_draft(workflow=workflow, raw=raw, by=by, base_revision=base_revision, client=client)
        base_revision = workflow.draft_revision
    with transaction.atomic():
        if base_revision is not None:
            expect_revision(slug=workflow.slug, base_revision=base_revision)
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


# --- diff ----------------------------------------------------------------------------------
STEP_FIELDS = ("kind", "name", "join", "timeout_seconds", "retry")
WORKFLOW_FIELDS = ("name", "description", "vars", "concurrency")


def _edge_set(raw: dict) -> set[tuple[str, str, str]]:
    edges: set[tuple[str, str, str]] = set()
    for step in raw.get("steps") or []:
        if not isinstance(step, dict):
            continue
        for source in step.get("after") or []:
            edges.add((str(source), str(step.get("id")), "success"))
    for edge in raw.get("edges") or []:
        if isinstance(edge, dict):
            edges.add(
                (str(edge.get("from")), str(edge.get("to")), str(edge.get("port") or "success"))
            )
    return edges


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def describe_trigger(trigger: Any) -> str:
    if not isinstance(trigger, dict):
        return _canonical(trigger)
    if "event" in trigger:
        text = f"event {trigger['event']}"
        return f"{text} if {trigger['filter']}" if trigger.get("filter") else text
    if "webhook" in trigger:
        return f"webhook {trigger['webhook']}"
    if "schedule" in trigger:
        return f"schedule {trigger['schedule']} ({trigger.get('timezone') or 'UTC'})"
    if trigger.get("manual"):
        return "manual"
    # Where the node is drawn is layout, not behaviour (as for steps, see diff_definitions).
    return _canonical({k: v for k, v in trigger.items() if k not in LAYOUT_KEYS})


def diff_definitions(before: dict, after: dict) -> dict[str, Any]:
    """What changed from `before` to `after`: workflow fields, triggers, each step (added,
    removed, or changed: its kind, name, join, timeout, retry and each config key) and the
    edges (`after` lists included). Node positions are layout, not behaviour: a step or a
    trigger that only moved counts as unchanged."""
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    workflow = [
        {"field": name, "before": before.get(name), "after": after.get(name)}
        for name in WORKFLOW_FIELDS
        if _canonical(before.get(name)) != _canonical(after.get(name))
    ]
    old_triggers = [describe_trigger(t) for t in before.get("triggers") or []]
    new_triggers = [describe_trigger(t) for t in after.get("triggers") or []]
    triggers = {
        "added": [t for t in new_triggers if t not in old_triggers],
        "removed": [t for t in old_triggers if t not in new_triggers],
    }

    def by_id(raw: dict) -> dict[str, dict]:
        return {s["id"]: s for s in raw.get("steps") or [] if isinstance(s, dict) and "id" in s}

    old_steps, new_steps = by_id(before), by_id(after)
    steps: list[dict[str, Any]] = []
    for step_id, step in new_steps.items():
        if step_id not in old_steps:
            steps.append(
                {
                    "id": step_id,
                    "change": "added",
                    "kind": step.get("kind"),
                    "fields": [],
                    "config": _config_changes({}, step.get("config")),
                }
            )
            continue
        old = old_steps[step_id]
        fields = [
            {"field": name, "before": old.get(name), "after": step.get(name)}
            for name in STEP_FIELDS
            if _canonical(old.get(name)) != _canonical(step.get(name))
        ]
        config = _config_changes(old.get("config"), step.get("config"))
        if fields or config:
            steps.append(
                {
                    "id": step_id,
                    "change": "changed",
                    "kind": step.get("kind"),
                    "fields": fields,
                    "config": config,
                }
            )
    for step_id, step in old_steps.items():
        if step_id not in new_steps:
            steps.append(
                {
                    "id": step_id,
                    "change": "removed",
                    "kind": step.get("kind"),
                    "fields": [],
                    "config": _config_changes(step.get("config"), {}),
                }
            )
    old_edges, new_edges = _edge_set(before), _edge_set(after)
    edges = {
        "added": [{"from": f, "to": t, "port": p} for f, t, p in sorted(new_edges - old_edges)],
        "removed": [{"from": f, "to": t, "port": p} for f, t, p in sorted(old_edges - new_edges)],
    }
    changed = bool(
        workflow
        or triggers["added"]
        or triggers["removed"]
        or steps
        or edges["added"]
        or edges["removed"]
    )
    return {
        "changed": changed,
        "workflow": workflow,
        "triggers": triggers,
        "steps": steps,
        "edges": edges,
    }


def _config_changes(old: Any, new: Any) -> list[dict[str, Any]]:
    old = old if isinstance(old, dict) else {}
    new = new if isinstance(new, dict) else {}
    changes = []
    for key in [*new, *(k for k in old if k not in new)]:
        if key not in old:
            changes.append({"key": key, "change": "added", "before": None, "after": new[key]})
        elif key not in new:
            changes.append({"key": key, "change": "removed", "before": old[key], "after": None})
        elif _canonical(old[key]) != _canonical(new[key]):
            changes.append({"key": key, "change": "changed", "before": old[key], "after": new[key]})
    return changes


# --- trying a draft ------------------------------------------------------------------------
def trigger_event_types(*, slug: str, raw: Any) -> list[str]:
    """The event types the draft's triggers listen to (webhooks that exist only)."""
    types: list[str] = []
    triggers = raw.get("triggers") if isinstance(raw, dict) else None
    for trigger in triggers if isinstance(triggers, list) else []:
        if not isinstance(trigger, dict):
            continue
        if isinstance(trigger.get("event"), str) and trigger["event"]:
            types.append(trigger["event"])
        elif isinstance(trigger.get("webhook"), str):
            webhook = Webhook.objects.filter(slug=trigger["webhook"]).first()
            if webhook is not None:
                types.append(webhook.event_type)
        elif trigger.get("schedule"):
            types.append(schedule_event_type(slug))
        elif trigger.get("manual"):
            types.append(manual_event_type(slug))
    return list(dict.fromkeys(types))


def recent_samples(
    *, slug: str, raw: Any, limit: int = RECENT_SAMPLES, hidden: frozenset[int] = frozenset()
) -> list[Event]:
    """Recent stored events of the types the draft's triggers listen to, newest first; none
    that belongs to a workflow in `hidden` (its data is not the editor's to read)."""
    types = trigger_event_types(slug=slug, raw=raw)
    if not types:
        return []
    samples = visible_events(Event.objects.filter(type__in=types), hidden=hidden)
    return list(samples.order_by("-id")[:limit])


def _sample_event(*, workflow: Workflow, data: Any, event_type: str, by: str) -> Event:
    """Store a typed-in sample as an event of its own, already marked published: it is the
    try run's event (its steps read it), but it never goes on the bus, so no trigger and no
    waiting run hears of it. Raises InvalidEvent or SchemaViolation."""
    types = trigger_event_types(slug=workflow.slug, raw=workflow.draft)
    event_type = event_type or (types[0] if types else f"signalbox.try.{workflow.slug}")
    attributes = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"/signalbox/try/{path_segment(by or 'someone')}",
        "type": event_type,
        "subject": workflow.slug,
        "time": timezone.now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if data is not None:
        attributes["datacontenttype"] = "application/json"
    envelope = validate(attributes, data=data, data_is_base64=False)
    event, _created = ingest_event(envelope=envelope, channel=TRY_CHANNEL, off_bus=True)
    return event


_NO_DATA: Any = object()


def try_draft(
    *,
    workflow: Workflow,
    by: str,
    event_id: int | None = None,
    data: Any = _NO_DATA,
    event_type: str = "",
    raw: Any = None,
    base_revision: int | None = None,
    client: str = "",
    hidden: frozenset[int] = frozenset(),
) -> Run:
    """Run the draft once with a sample event: a stored one (`event_id`, not one of a
    workflow in `hidden`: as if it did not exist) or `data` typed in.

    Freezes the draft into a snapshot version and starts a Run(origin="try") of it at once,
    outside the bus and outside the workflow's concurrency limits. Its steps really run
    (an HTTP step calls its URL). Raises InvalidDefinition when the draft is not valid,
    Event.DoesNotExist, InvalidEvent or SchemaViolation for a bad sample; DraftConflict
    when `raw` is stored on a `base_revision` that is not the stored one."""
    if raw is not None:
        save_draft(workflow=workflow, raw=raw, by=by, base_revision=base_revision, client=client)
    parse_definition(workflow.draft)
    with transaction.atomic():
        if event_id is not None:
            event = visible_events(Event.objects.all(), hidden=hidden).get(pk=event_id)
        else:
            event = _sample_event(
                workflow=workflow,
                data=None if data is _NO_DATA else data,
                event_type=event_type,
                by=by,
            )
        snapshot = WorkflowVersion.objects.create(
            workflow=workflow,
            number=None,
            kind="snapshot",
            definition=workflow.draft,
            note=f"draft tried by {by}"[:MAX_NOTE],
            published_by=by[:150],
        )
        run = Run.objects.create(
            workflow=workflow,
            version=snapshot,
            event=event,
            origin="try",
            correlation_id=event.correlation_id,
            partition_key=str((event.extensions or {}).get("partitionkey") or event.subject or ""),
        )
        journal(run, "run.try", by=by, snapshot=snapshot.pk, at=timezone.now().isoformat())
        run.save(update_fields=["seq"])
        # Not through admit(): a try is someone waiting at the editor, not a queued event,
        # and it takes no slot from the workflow's real runs.
        advance_locked(run, engine.RunStarted())
        audit.record(
            actor=by,
            action="workflow.try",
            target_type="workflow",
            target_id=workflow.slug,
            details={"run": run.pk, "snapshot": snapshot.pk, "event": event.pk},
        )
    return run


# --- definitions as files ------------------------------------------------------------------
def export_definition(
    *, workflow: Workflow, yaml_format: bool, version: int | None = None
) -> tuple[str, str]:
    """(filename, text) of the draft, or of a published version when `version` is given."""
    raw = definition_at(workflow, version)
    suffix = f"-v{version}" if version is not None else ""
    extension = "yaml" if yaml_format else "json"
    return f"{workflow.slug}{suffix}.{extension}", dump_definition(raw, yaml_format=yaml_format)


@dataclass(frozen=True)
class ImportResult:
    workflow: Workflow
    created: bool
    version: WorkflowVersion | None


def import_definition(
    *,
    slug: str,
    body: bytes,
    yaml_format: bool,
    by: str,
    publish: bool = False,
    note: str = "",
    base_revision: int | None = None,
    client: str = "",
    team=None,
) -> ImportResult:
    """Replace a workflow's draft with a definition file (creating the workflow if needed,
    in `team`) and optionally publish it, all or nothing.

    Raises UnreadableDefinition (neither JSON nor YAML), InvalidDefinition (every problem,
    with its JSON pointer), DraftRefused (a bad slug) or DraftConflict (`base_revision` is
    not the stored revision); then nothing has changed."""
    if not SLUG.match(slug or ""):
        raise DraftRefused(f"{slug!r} is not a workflow slug (letters, digits, '-' and '_')")
    raw = load_definition_text(body, yaml_format=yaml_format)
    parse_definition(raw)
    with transaction.atomic():
        workflow, created = replace_draft(
            slug=slug, raw=raw, by=by, base_revision=base_revision, client=client, team=team
        )
        version = None
        if publish:
            # Inside the transaction: a publish that is refused (a webhook that does not
            # exist) takes the new draft back with it.
            version = publish_workflow(
                slug=slug, note=(note or "imported")[:MAX_NOTE], published_by=by
            )
        audit.record(
            actor=by,
            action="workflow.import",
            target_type="workflow",
            target_id=slug,
            reason=note or "",
            details={"created": created, "version": version.number if version else None},
        )
    workflow.refresh_from_db()
    return ImportResult(workflow=workflow, created=created, version=version)
