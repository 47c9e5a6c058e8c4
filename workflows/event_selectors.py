"""Read queries over the event store, shared by the API, the dashboard and the CLI."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, Q, QuerySet

from .events.envelope import to_structured
from .models import Event, Run, Workflow
from .services.producers import RUN_TYPE_PREFIX

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


def _hidden_slugs(hidden: frozenset[int]) -> QuerySet[Workflow]:
    return Workflow.objects.filter(id__in=sorted(hidden)).values("slug")


def events(
    query: EventQuery, *, with_run_counts: bool = False, hidden: frozenset[int] = frozenset()
) -> tuple[list[Event], bool]:
    """One page, newest first, keyset-paginated by id (index-backed at any depth). The
    run events (signalbox.run.*, their subject the workflow's slug) of the workflows in
    `hidden` are left out, and so are their runs from the counts, as the dashboard's live
    flow does; every other event is everyone's.

    Returns (events, more): `more` is true when an older page exists."""
    qs: QuerySet[Event] = Event.objects.order_by("-id")
    if hidden:
        qs = qs.exclude(type__startswith=RUN_TYPE_PREFIX, subject__in=_hidden_slugs(hidden))
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


def event_detail(event_id: int, *, hidden: frozenset[int] = frozenset()) -> Event | None:
    """The event, or None when there is none or it is a run event of a workflow in
    `hidden` (the same events `events` leaves out)."""
    found = Event.objects.filter(pk=event_id)
    if hidden:
        found = found.exclude(type__startswith=RUN_TYPE_PREFIX, subject__in=_hidden_slugs(hidden))
    return found.first()


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
