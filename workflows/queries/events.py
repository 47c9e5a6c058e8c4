"""Read queries over the event store, shared by the API, the dashboard and the CLI."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.db.models import (
    BigIntegerField,
    BooleanField,
    Case,
    Count,
    Exists,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Substr
from django.db.models.lookups import In

from workflows.catalog.models import Workflow
from workflows.events.envelope import to_structured
from workflows.events.models import Event
from workflows.runs.models import Run
from workflows.runs.producers import RUN_SOURCE, WORKFLOW_EXTENSION

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

# Query parameters the event store understands; `correlationid` (the CloudEvents extension
# name) and `cursor` are accepted as aliases.
TEXT_FILTERS = ("type", "source", "subject", "correlation_id")
ALIASES = {"correlationid": "correlation_id", "cursor": "before_id"}
PARAMETERS = frozenset((*TEXT_FILTERS, "after", "before", "before_id", "limit", *ALIASES))
# A "+" in an unencoded query string arrives as a space: "...T12:00:00 01:00".
SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")


class InvalidQuery(Exception):
    """`errors` maps a query parameter to what is wrong with its value."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))


@dataclass(frozen=True)
class EventQuery:
    type: str = ""
    source: str = ""
    subject: str = ""
    correlation_id: str = ""
    # received_at in the half-open range [after, before): windows side by side never
    # overlap and never miss an event.
    after: datetime | None = None
    before: datetime | None = None
    before_id: int | None = None
    limit: int = PAGE_SIZE

    def filters(self) -> dict[str, str]:
        """The filters as query parameters (without paging), e.g. for links."""
        params = {name: getattr(self, name) for name in TEXT_FILTERS if getattr(self, name)}
        for name in ("after", "before"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value.isoformat().replace("+00:00", "Z")
        return params

    def page_after(self, last_id: int) -> str:
        """The query string of the next (older) page."""
        return urlencode({**self.filters(), "before_id": last_id, "limit": self.limit})

    @property
    def filtered(self) -> bool:
        return bool(self.filters())


def parse_event_query(params: Mapping[str, Any], *, strict: bool = False) -> EventQuery:
    """Read an EventQuery from request.GET. Empty values mean "no filter" (a GET form sends
    every field). Raises InvalidQuery naming each bad parameter; with `strict`, unknown
    parameters are errors too, so a typo does not silently return everything."""
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    names = params.keys()
    for name in names:
        many = params.getlist(name) if hasattr(params, "getlist") else [params[name]]
        if name not in PARAMETERS:
            if strict:
                errors[name] = "unknown parameter; use " + ", ".join(sorted(PARAMETERS))
            continue
        if len(many) > 1:
            errors[name] = "give this parameter once"
            continue
        canonical = ALIASES.get(name, name)
        value = str(many[0]).strip()
        if not value:
            continue
        if canonical in values and values[canonical] != value:
            errors[name] = f"disagrees with {canonical}"
            continue
        values[canonical] = value

    parsed: dict[str, Any] = {name: values[name] for name in TEXT_FILTERS if name in values}
    for name in ("after", "before"):
        if name in values:
            try:
                parsed[name] = _parse_time(values[name])
            except ValueError:
                errors[name] = "must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
    if "before_id" in values:
        try:
            parsed["before_id"] = _positive_int(values["before_id"])
        except ValueError:
            errors["before_id"] = "must be a positive integer (an event id)"
    if "limit" in values:
        try:
            parsed["limit"] = _positive_int(values["limit"], maximum=MAX_PAGE_SIZE)
        except ValueError:
            errors["limit"] = f"must be an integer from 1 to {MAX_PAGE_SIZE}"
    after, before = parsed.get("after"), parsed.get("before")
    if after and before and after >= before:
        errors["after"] = "must be earlier than before"
    if errors:
        raise InvalidQuery(errors)
    return EventQuery(**parsed)


def _parse_time(text: str) -> datetime:
    text = SPACED_OFFSET.sub(r"+\1", text) if len(text) > 16 else text
    when = datetime.fromisoformat(text)
    # A time without an offset is UTC (the dashboard's datetime-local fields send those).
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _positive_int(text: str, *, maximum: int | None = None) -> int:
    if not text.isdigit():
        raise ValueError(text)
    number = int(text)
    if number < 1 or (maximum is not None and number > maximum):
        raise ValueError(text)
    return number


# --- team visibility ---------------------------------------------------------------------------
# An event belongs to a workflow when one of its runs produced it: its run events
# (signalbox.run.*), what its emit_event steps published, a sub_workflow step's trigger
# event. Signalbox ingests all of those on the `run` channel (nothing from outside arrives
# there) with the workflow's slug in the `sbworkflow` extension. Events that steps emitted
# before they carried sbworkflow are known by their default source instead,
# /signalbox/runs/<run id> (a step that chose another source then cannot be attributed).
# Every other event (HTTP, webhooks, streams, schedules, manual) belongs to no workflow and
# is everyone's.
_RUN_PATH = RUN_SOURCE + "/"
_RUN_PATH_WITH_ID = r"^/signalbox/runs/[0-9]{1,18}$"  # 18 digits always fit a bigint


def hidden_events(hidden: frozenset[int], *, via: str = "") -> Q:
    """The events that belong to a workflow in `hidden` (dashboard_selectors.
    hidden_workflow_ids / hidden_for_team), as a condition on Event, or on a model that
    reaches it through `via` (e.g. "event__"). Never NULL, so it can be negated: every
    check is made per row on the row itself (one primary-key probe of the runs table for a
    legacy emitted event), so a page read along the id index stays a page's worth of work."""
    if not hidden:
        return Q(pk__in=[])
    ids = sorted(hidden)
    slugs = Workflow.objects.filter(id__in=ids).order_by().values("slug")
    extensions = f"{via}extensions"
    marked = Q(**{f"{extensions}__has_key": WORKFLOW_EXTENSION})
    by_mark = In(
        Coalesce(
            KeyTextTransform(WORKFLOW_EXTENSION, extensions), Value(""), output_field=TextField()
        ),
        slugs,
    )
    # The emitting run's workflow, a scalar subquery: one primary-key probe per row (an
    # EXISTS would be planned as a hash of every run of the hidden workflows). CASE, not
    # AND: only a source known to end in digits may be cast to a run id.
    run_id = Cast(Substr(OuterRef(f"{via}source"), len(_RUN_PATH) + 1), BigIntegerField())
    emitter = Subquery(Run.objects.filter(pk=run_id).order_by().values("workflow_id")[:1])
    by_source = Case(
        When(
            Q(**{f"{via}source__regex": _RUN_PATH_WITH_ID}),
            then=In(Coalesce(emitter, Value(0), output_field=BigIntegerField()), ids),
        ),
        default=Value(False),
        output_field=BooleanField(),
    )
    return Q(**{f"{via}channel": "run"}) & ((marked & Q(by_mark)) | (~marked & Q(by_source)))


def visible_events(
    events: QuerySet[Event], *, hidden: frozenset[int], via: str = ""
) -> QuerySet[Event]:
    """`events` without those that belong to a workflow in `hidden`."""
    return events.filter(~hidden_events(hidden, via=via)) if hidden else events


def is_hidden(event: Event, *, hidden: frozenset[int]) -> bool:
    """Whether `event` belongs to a workflow in `hidden` (one query, the same rule)."""
    return bool(hidden) and Event.objects.filter(pk=event.pk).filter(hidden_events(hidden)).exists()


def events(
    query: EventQuery, *, with_run_counts: bool = False, hidden: frozenset[int] = frozenset()
) -> tuple[list[Event], bool]:
    """One page, newest first, keyset-paginated by id (index-backed at any depth). The
    events of the workflows in `hidden` (hidden_events: their run events and what their
    steps emitted) are left out, and so are their runs from the counts, as the dashboard's
    live flow does; every other event is everyone's.

    Returns (events, more): `more` is true when an older page exists."""
    qs: QuerySet[Event] = visible_events(Event.objects.order_by("-id"), hidden=hidden)
    for name in TEXT_FILTERS:
        value = getattr(query, name)
        if value:
            qs = qs.filter(**{name: value})
    if query.after is not None:
        qs = qs.filter(received_at__gte=query.after)
    if query.before is not None:
        qs = qs.filter(received_at__lt=query.before)
    if query.before_id is not None:
        qs = qs.filter(id__lt=query.before_id)
    if with_run_counts:
        # Shadow runs reuse the event to try a draft; the event did not start them.
        counted = ~Q(runs__origin="shadow")
        if hidden:
            counted &= ~Q(runs__workflow_id__in=sorted(hidden))
        qs = qs.annotate(run_count=Count("runs", filter=counted))
    # One extra row tells whether there is an older page without counting.
    page = list(qs[: query.limit + 1])
    return page[: query.limit], len(page) > query.limit


def events_of_workflow(
    events: QuerySet[Event], *, slug: str, hidden: frozenset[int] = frozenset()
) -> QuerySet[Event]:
    """The events that started a run of workflow `slug` (as its trigger or a parent's
    call), and those of a type it listens to that the bus consumer has not matched yet (the
    live flow shows an event before its runs exist). None for a workflow that does not
    exist or that is in `hidden`: another team's workflow is not there for this viewer."""
    workflow = Workflow.objects.filter(slug=slug).exclude(id__in=sorted(hidden)).first()
    if workflow is None:
        return events.none()
    # By the (event, workflow) index of runs: one probe per event read.
    started = Run.objects.filter(event_id=OuterRef("pk"), workflow=workflow).exclude(
        origin="shadow"
    )
    listened = workflow.subscriptions.values("event_type")
    return events.filter(Q(Exists(started)) | Q(matched_at__isnull=True, type__in=listened))


def event_detail(event_id: int, *, hidden: frozenset[int] = frozenset()) -> Event | None:
    """The event, or None when there is none or it belongs to a workflow in `hidden` (the
    same events `events` leaves out)."""
    return visible_events(Event.objects.filter(pk=event_id), hidden=hidden).first()


def runs_started(event: Event, *, hidden: frozenset[int] = frozenset()) -> list[Run]:
    """The runs the event started, but those of the workflows in `hidden`."""
    runs = event.runs.select_related("workflow", "version").exclude(origin="shadow")
    if hidden:
        runs = runs.exclude(workflow_id__in=sorted(hidden))
    return list(runs.order_by("id"))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def event_as_json(event: Event) -> dict[str, Any]:
    """The stored event: Signalbox's metadata around the structured CloudEvent."""
    return {
        "id": event.pk,
        "received_at": _iso(event.received_at),
        "channel": event.channel,
        "validation": event.validation,
        "schema_version": event.schema_version,
        "published": event.published_at is not None,
        "published_at": _iso(event.published_at),
        "matched_at": _iso(event.matched_at),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "cloudevent": to_structured(event),
    }


def run_started_as_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "workflow": run.workflow.slug,
        "version": run.version.number,
        "status": run.status,
        "created_at": _iso(run.created_at),
        "url": f"/api/v1/runs/{run.pk}",
    }


def event_detail_as_json(event: Event, *, hidden: frozenset[int] = frozenset()) -> dict[str, Any]:
    return {
        **event_as_json(event),
        "runs": [run_started_as_json(run) for run in runs_started(event, hidden=hidden)],
    }
