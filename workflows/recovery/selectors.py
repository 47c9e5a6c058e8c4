"""Read queries for recovery: failed runs to replay, dead letters, audit entries, batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from workflows.access.models import AuditEntry
from workflows.catalog.visibility import hidden_slugs
from workflows.events.models import DeadLetter
from workflows.queries.events import _parse_time, hidden_events
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import Run
from workflows.runs.producers import WORKFLOW_EXTENSION

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class InvalidFilter(Exception):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))


@dataclass(frozen=True)
class FailedRunFilter:
    """Which failed runs a bulk replay takes. Runs already replayed are left out."""

    workflow: str = ""
    version: int | None = None
    error: str = ""  # a piece of the run's error text, any case
    after: datetime | None = None  # the run finished at or after this
    before: datetime | None = None  # … and before this
    runs: tuple[int, ...] = ()  # exactly these runs (ticked in the run list), if any

    def as_json(self) -> dict[str, Any]:
        return {
            **({"runs": list(self.runs)} if self.runs else {}),
            "workflow": self.workflow or None,
            "version": self.version,
            "error": self.error or None,
            "after": self.after.isoformat() if self.after else None,
            "before": self.before.isoformat() if self.before else None,
        }


def parse_failed_run_filter(params: Mapping[str, Any]) -> FailedRunFilter:
    """From a query string, a form or a JSON body; empty values mean "any"."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}

    def text(name: str) -> str:
        value = params.get(name)
        return "" if value is None else str(value).strip()

    values["workflow"] = text("workflow")
    values["error"] = text("error")
    if text("version"):
        try:
            values["version"] = int(text("version"))
        except ValueError:
            errors["version"] = "must be a version number"
    for name in ("after", "before"):
        if text(name):
            try:
                values[name] = _parse_time(text(name))
            except ValueError:
                errors[name] = "must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
    ticked = params.getlist("run") if hasattr(params, "getlist") else params.get("runs") or []
    if not isinstance(ticked, list) or not all(str(i).strip().isdigit() for i in ticked):
        errors["runs"] = "must be run ids"
    elif ticked:
        values["runs"] = tuple(dict.fromkeys(int(str(i).strip()) for i in ticked))
    if values.get("after") and values.get("before") and values["after"] >= values["before"]:
        errors["after"] = "must be earlier than before"
    if errors:
        raise InvalidFilter(errors)
    return FailedRunFilter(**values)


def failed_runs(
    selection: FailedRunFilter, *, hidden: frozenset[int] = frozenset()
) -> QuerySet[Run]:
    """`hidden`: workflows the asker may not see (dashboard_selectors.hidden_workflow_ids)."""
    # "Not replayed yet" as a correlated NOT EXISTS, answered by the partial index of the
    # replays (run_replays): the exclude() over the reverse relation was a NOT IN over every replay,
    # a sequential scan of the whole run table (1.6 s at a million runs), and needed a
    # DISTINCT that sorted every failed run before the LIMIT.
    replayed = Run.objects.filter(replay_of=OuterRef("pk"), origin="replay")
    runs = (
        Run.objects.filter(status="failed")
        .exclude(origin__in=["shadow", "try"])  # a try is the editor's, not the workflow's
        .filter(~Exists(replayed))
        .select_related("workflow", "version")
        # A thousand runs' versions, each with its whole definition, were most of the
        # page's time; definition_for reads a definition once per version when it is needed.
        .defer("version__definition")
        .order_by("id")
    )
    if hidden:
        runs = runs.exclude(workflow_id__in=sorted(hidden))
    if selection.runs:
        runs = runs.filter(pk__in=selection.runs)
    if selection.workflow:
        runs = runs.filter(workflow__slug=selection.workflow)
    if selection.version is not None:
        runs = runs.filter(version__number=selection.version)
    if selection.error:
        runs = runs.filter(error__icontains=selection.error)
    if selection.after:
        runs = runs.filter(finished_at__gte=selection.after)
    if selection.before:
        runs = runs.filter(finished_at__lt=selection.before)
    return runs


# --- dead letters, and whom they belong to ---------------------------------------------------
# A dead letter belongs to every workflow it names or touches, by kind:
# - step: the run's workflow (and the `workflow` its payload names, kept if the run is gone);
# - event: the run whose run event broke its schema (`run`, or the CloudEvent's sbworkflow
#   extension), the workflows a depth-guard letter was cut from (`workflows`), the runs its
#   event started, and the workflow whose event it is (event_selectors.hidden_events: its
#   run events and what its steps emitted);
# - bus: the runs its event started, and the workflow whose event it is.
# A letter touching a workflow the asker may not see is not there for them; a bus, stream or
# schedule letter touching no workflow is everyone's.
def _payload_lists_any(key: str, slugs: list[str]) -> Q:
    """payload[key] is a JSON list naming one of `slugs`."""
    found = Q(pk__in=[])
    for slug in slugs:
        if connection.features.supports_json_field_contains:
            found |= Q(**{f"payload__{key}__contains": slug})  # PostgreSQL: list @> "slug"
        else:  # SQLite: the list's JSON text holds the quoted slug
            found |= Q(**{f"payload__{key}__icontains": f'"{slug}"'})
    return found


def letters_touching(hidden: frozenset[int]) -> QuerySet[DeadLetter]:
    """Dead letters that belong to (name or touch) one of the workflows in `hidden`."""
    if not hidden:
        return DeadLetter.objects.none()
    ids, slugs = sorted(hidden), sorted(hidden_slugs(hidden))
    own_run = Q(run__workflow_id__in=ids) | Q(payload__workflow__in=slugs)
    through_event = ~Q(kind="step") & (
        Q(event__runs__workflow_id__in=ids)
        | hidden_events(hidden, via="event__")
        | Q(**{f"payload__cloudevent__{WORKFLOW_EXTENSION}__in": slugs})
        | _payload_lists_any("workflows", slugs)
    )
    return DeadLetter.objects.filter(own_run | through_event)


def _visible_letters(letters: QuerySet[DeadLetter], hidden: frozenset[int]) -> QuerySet[DeadLetter]:
    if not hidden:
        return letters
    # Per row (EXISTS on the letter's own id), so a page read along the -id index stops early.
    return letters.filter(~Exists(letters_touching(hidden).filter(pk=OuterRef("pk"))))


def dead_letters(
    *,
    state: str = "open",
    kind: str = "",
    before_id: int | None = None,
    limit: int = PAGE_SIZE,
    hidden: frozenset[int] = frozenset(),
) -> tuple[list[DeadLetter], bool]:
    """Newest first; `state` is open, resolved or all; letters of workflows in `hidden`
    (dashboard_selectors.hidden_workflow_ids) are left out. Returns (page, more)."""
    letters = DeadLetter.objects.select_related("run__workflow", "event").order_by("-id")
    if state == "open":
        letters = letters.filter(resolved_at__isnull=True)
    elif state == "resolved":
        letters = letters.filter(resolved_at__isnull=False)
    if kind:
        letters = letters.filter(kind=kind)
    if before_id:
        letters = letters.filter(pk__lt=before_id)
    page = list(_visible_letters(letters, hidden)[: limit + 1])
    return page[:limit], len(page) > limit


def dead_letter(letter_id: int, *, hidden: frozenset[int] = frozenset()) -> DeadLetter | None:
    """The letter, or None when it does not exist or belongs to a workflow in `hidden`."""
    letters = DeadLetter.objects.select_related("run__workflow", "event").filter(pk=letter_id)
    return _visible_letters(letters, hidden).first()


def visible_dead_letter_ids(letter_ids: list[int], *, hidden: frozenset[int]) -> set[int]:
    """Which of `letter_ids` exist and belong to no workflow in `hidden`."""
    letters = DeadLetter.objects.filter(pk__in=letter_ids)
    return set(_visible_letters(letters, hidden).values_list("pk", flat=True))


def open_dead_letter_count(*, hidden: frozenset[int] = frozenset()) -> int:
    return _visible_letters(DeadLetter.objects.filter(resolved_at__isnull=True), hidden).count()


# --- the audit trail -----------------------------------------------------------------------------
def _audit_queryset(
    *, action: str = "", actor: str = "", target_type: str = "", target_id: str = ""
) -> QuerySet[AuditEntry]:
    entries = AuditEntry.objects.order_by("-id")
    if action:
        entries = entries.filter(action=action)
    if actor:
        entries = entries.filter(actor=actor)
    if target_type:
        entries = entries.filter(target_type=target_type)
    if target_id:
        entries = entries.filter(target_id=str(target_id))
    return entries


def audit_entries(
    *,
    action: str = "",
    actor: str = "",
    target_type: str = "",
    target_id: str = "",
    before_id: int | None = None,
    limit: int = PAGE_SIZE,
) -> tuple[list[AuditEntry], bool]:
    entries = _audit_queryset(
        action=action, actor=actor, target_type=target_type, target_id=target_id
    )
    if before_id:
        entries = entries.filter(pk__lt=before_id)
    page = list(entries[: limit + 1])
    return page[:limit], len(page) > limit


def foreign_audit_ids(found: list[AuditEntry], hidden: frozenset[int]) -> set[int]:
    """Which of `found` are about a workflow in `hidden`: the workflow itself (drafts,
    publishes, shadow replays, re-drives of events), one of its runs (replays, cancels), a
    batch over its runs, or one of its dead letters. A target that no longer exists, or of a
    type not listed here, is attributed to no workflow. A few queries per call."""
    if not hidden or not found:
        return set()
    targets: dict[str, set[str]] = {}
    for entry in found:
        targets.setdefault(entry.target_type, set()).add(entry.target_id)

    def numbers(target_type: str) -> list[int]:
        return sorted(int(i) for i in targets.get(target_type, ()) if i.isdigit())

    slugs = hidden_slugs(hidden)
    foreign = {("workflow", slug) for slug in targets.get("workflow", ()) if slug in slugs}
    if numbers("run"):
        runs = Run.objects.filter(pk__in=numbers("run"), workflow_id__in=sorted(hidden))
        foreign |= {("run", str(pk)) for pk in runs.values_list("pk", flat=True)}
    if numbers("dead_letter"):
        letters = letters_touching(hidden).filter(pk__in=numbers("dead_letter"))
        foreign |= {("dead_letter", str(pk)) for pk in letters.values_list("pk", flat=True)}
    if numbers("batch"):
        batches_found = list(ReplayBatch.objects.filter(pk__in=numbers("batch")))
        foreign |= {("batch", str(pk)) for pk in foreign_batch_ids(batches_found, hidden)}
    return {e.pk for e in found if (e.target_type, e.target_id) in foreign}


AUDIT_SCAN_ROUNDS = 20


def visible_audit_entries(
    *,
    hidden: frozenset[int],
    action: str = "",
    actor: str = "",
    target_type: str = "",
    target_id: str = "",
    before_id: int | None = None,
    limit: int = PAGE_SIZE,
) -> tuple[list[AuditEntry], int | None]:
    """A page of entries (newest first) leaving out those about workflows in `hidden`, and
    the `before_id` of the next page (None at the end). Reading is bounded: a user hidden
    from most entries may get a shorter page, and the next one goes on from where the
    reading stopped, never skipping an entry."""
    entries = _audit_queryset(
        action=action, actor=actor, target_type=target_type, target_id=target_id
    )
    shown: list[AuditEntry] = []
    cursor = before_id
    for _ in range(AUDIT_SCAN_ROUNDS):
        found = list((entries.filter(pk__lt=cursor) if cursor else entries)[: limit + 1])
        foreign = foreign_audit_ids(found, hidden)
        for entry in found:
            if entry.pk in foreign:
                continue
            shown.append(entry)
            if len(shown) > limit:
                return shown[:limit], shown[limit - 1].pk
        if len(found) <= limit:
            return shown, None
        cursor = found[-1].pk
    return shown, cursor


def audit_for_run(run: Run) -> list[AuditEntry]:
    """What people did to this run, or to it as a replay (the replay entry of its original
    names it), or to its dead letters."""
    letters = [str(pk) for pk in DeadLetter.objects.filter(run=run).values_list("pk", flat=True)]
    query = Q(target_type="run", target_id=str(run.pk)) | Q(
        target_type="dead_letter", target_id__in=letters
    )
    if run.replay_of_id:
        query |= Q(target_type="run", target_id=str(run.replay_of_id), details__replay=run.pk)
    return list(AuditEntry.objects.filter(query).order_by("-id")[:100])


# A batch is shown only to people who may see every run it selected: its counts, errors and
# comparisons describe those runs, so a batch touching a team's workflow is that team's.
def _selected(batch: ReplayBatch) -> list[int]:
    return [i for i in batch.selection.get("run_ids") or [] if isinstance(i, int)]


def foreign_batch_ids(found: list[ReplayBatch], hidden: frozenset[int]) -> set[int]:
    """Which of `found` select a run of a workflow in `hidden` (one query)."""
    if not hidden or not found:
        return set()
    selected = {i for b in found for i in _selected(b)}
    foreign = set(
        Run.objects.filter(pk__in=sorted(selected), workflow_id__in=sorted(hidden)).values_list(
            "pk", flat=True
        )
    )
    return {b.pk for b in found if foreign.intersection(_selected(b))}


def batches(*, limit: int = PAGE_SIZE, hidden: frozenset[int] = frozenset()) -> list[ReplayBatch]:
    """Newest first, leaving out batches over workflows in `hidden`."""
    shown: list[ReplayBatch] = []
    before: int | None = None
    for _ in range(20):  # bounded: a user hidden from most batches gets a shorter page
        page = ReplayBatch.objects.order_by("-id")
        if before is not None:
            page = page.filter(id__lt=before)
        found = list(page[: max(limit, 1) * 2])
        foreign = foreign_batch_ids(found, hidden)
        shown += [b for b in found if b.pk not in foreign]
        if len(shown) >= limit or not found:
            break
        before = found[-1].pk
    return shown[:limit]


def batch(batch_id: int, *, hidden: frozenset[int] = frozenset()) -> ReplayBatch | None:
    """The batch, or None when it does not exist or selects runs of a workflow in `hidden`."""
    found = ReplayBatch.objects.filter(pk=batch_id).first()
    if found is None or foreign_batch_ids([found], hidden):
        return None
    return found


def batch_runs(batch: ReplayBatch) -> dict[int, Run]:
    """The runs a batch started, by id."""
    ids = [i["replay"] for i in batch.summary.get("items", []) if i.get("replay")]
    return {r.pk: r for r in Run.objects.filter(pk__in=ids).select_related("workflow", "version")}


def batch_outcomes(batch: ReplayBatch) -> dict[str, int]:
    """How the runs a batch started are doing: succeeded, failed, cancelled, in flight."""
    counts = {"succeeded": 0, "failed": 0, "cancelled": 0, "in_flight": 0}
    for run in batch_runs(batch).values():
        counts[run.status if run.status in counts else "in_flight"] += 1
    return counts


def batch_as_json(batch: ReplayBatch) -> dict[str, Any]:
    return {
        "id": batch.pk,
        "kind": batch.kind,
        "status": batch.status,
        "selection": batch.selection,
        "options": batch.options,
        "total": batch.total,
        "done": batch.done,
        "failed": batch.failed,
        "outcomes": batch_outcomes(batch),
        "summary": batch.summary,
        "created_by": batch.created_by,
        "created_at": batch.created_at.isoformat(),
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
    }


def dead_letter_as_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.pk,
        "kind": letter.kind,
        "reason": letter.reason,
        "payload": letter.payload,
        "original_payload": letter.original_payload,
        "edited": letter.original_payload is not None,
        "run": letter.run_id,
        "workflow": letter.run.workflow.slug if letter.run_id and letter.run else None,
        "step": letter.step_id or None,
        "event": letter.event_id,
        "created_at": letter.created_at.isoformat(),
        "resolved": letter.resolved_at is not None,
        "resolved_at": letter.resolved_at.isoformat() if letter.resolved_at else None,
        "resolved_by": letter.resolved_by or None,
        "resolution": letter.resolution or None,
    }


def audit_as_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "reason": entry.reason,
        "details": entry.details,
        "at": entry.at.isoformat(),
    }
