"""The filtered run list: keyset-paginated and index-backed at a million runs.

Time filters on runs and steps go through `first_id_at_or_after`: ids and `created_at`
grow together, so a time bound becomes an id bound found by binary search over the primary
key (about twenty one-row index lookups at a million rows) instead of needing an index on
`created_at`; the exact time condition is applied as well, inside that id range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import Max, Min, Model, Q, TextField
from django.db.models.functions import Cast

from workflows.catalog.models import Workflow
from workflows.core.states import RunStatus
from workflows.events.models import Event
from workflows.queries.events import _parse_time
from workflows.queries.runs import SHADOW, TRY
from workflows.runs.models import Run

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Clocks of concurrent inserts disagree by far less than this; the id bound is widened by
# it and the exact time condition does the rest.
CLOCK_SLACK = timedelta(seconds=60)
# Text search reads the data of this many events per page (the newest of the time range,
# or those below `search_below`), and offers to search further back from where it stopped:
# a trigram index on the events' JSON would cover every event, but at a cost to every
# ingested event, and reading 100,000 events' JSON was ~470 ms of SQL on a busy machine.
TEXT_SEARCH_EVENTS = 20_000
# At most this many matching events feed the run filter (newest first).
MATCHED_EVENTS = 1_000
RUN_EVENT_STATUSES = ("started", "succeeded", "failed", "cancelled")


# --- time as an id bound ---------------------------------------------------------------------
def first_id_at_or_after(model: type[Model], field_name: str, when: datetime) -> int | None:
    """The smallest id whose row's `field_name` is at or after `when`, assuming the field
    grows with the id (an insertion time). None for an empty table; max id + 1 when every
    row is older. Each probe is one primary-key index lookup."""
    bounds = model.objects.aggregate(lo=Min("id"), hi=Max("id"))
    if bounds["lo"] is None:
        return None
    lo, hi = bounds["lo"], bounds["hi"] + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = model.objects.filter(id__gte=mid).order_by("id").values_list("id", field_name)[:1]
        found = list(row)
        if not found or found[0][1] >= when:
            hi = mid
        else:
            lo = found[0][0] + 1
    return lo


# --- the run list ----------------------------------------------------------------------------
RUN_FILTERS = (
    "workflow",
    "status",
    "after",
    "before",
    "correlation_id",
    "q",
    "search_below",
    "tries",
)


@dataclass(frozen=True)
class RunQuery:
    workflow: str = ""
    status: str = ""
    after: datetime | None = None
    before: datetime | None = None
    correlation_id: str = ""
    q: str = ""
    # Text search reads events with ids below this one (a "search further back" link).
    search_below: int | None = None
    tries: bool = False  # show the editor's tries of the draft too
    before_id: int | None = None
    limit: int = PAGE_SIZE

    def filters(self) -> dict[str, str]:
        params = {}
        for name in RUN_FILTERS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat().replace("+00:00", "Z")
            elif value is True:
                value = "1"
            elif isinstance(value, int):
                value = str(value)
            if value:
                params[name] = value
        return params

    @property
    def filtered(self) -> bool:
        return bool(self.filters())

    def querystring(self, **extra: Any) -> str:
        params = {**self.filters(), **{k: v for k, v in extra.items() if v not in (None, "")}}
        if self.limit != PAGE_SIZE:
            params["limit"] = self.limit
        return urlencode(params)

    def cache_key(self) -> tuple:
        return (*(self.filters().get(name, "") for name in RUN_FILTERS), self.before_id, self.limit)


def parse_run_query(params: Mapping[str, Any]) -> tuple[RunQuery, dict[str, str]]:
    """A RunQuery from request.GET or a socket's query string, and the errors per field
    (a bad field is left out rather than failing the whole page)."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}

    def get(name: str) -> str:
        raw = params.get(name, "")
        if isinstance(raw, list):
            raw = raw[0] if raw else ""
        return str(raw).strip()

    for name in ("workflow", "correlation_id", "q"):
        if get(name):
            values[name] = get(name)[:255]
    if get("tries") in ("1", "on", "true"):
        values["tries"] = True
    if get("status"):
        if get("status") in set(RunStatus):
            values["status"] = get("status")
        else:
            errors["status"] = "one of " + ", ".join(RunStatus)
    for name in ("after", "before"):
        if get(name):
            try:
                values[name] = _parse_time(get(name))
            except ValueError:
                errors[name] = "an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
    for name, top in (("before_id", None), ("search_below", None), ("limit", MAX_PAGE_SIZE)):
        text = get(name)
        if text:
            if text.isdigit() and int(text) >= 1 and (top is None or int(text) <= top):
                values[name] = int(text)
            else:
                errors[name] = "a positive integer" + (f" up to {top}" if top else "")
    if values.get("after") and values.get("before") and values["after"] >= values["before"]:
        errors["after"] = "must be earlier than before"
        values.pop("after")
    return RunQuery(**values), errors


@dataclass(frozen=True)
class Note:
    """A line under the run list; `further` is the query string of a "search further back"
    link (the text search's next window of events), if any."""

    text: str
    further: str = ""

    def __str__(self) -> str:
        return self.text


@dataclass
class RunPage:
    runs: list[Run]
    more: bool
    notes: list[Note] = field(default_factory=list)
    newest_query: str = ""
    older_query: str = ""

    @property
    def next_before_id(self) -> int | None:
        return self.runs[-1].pk if self.more and self.runs else None


def matching_event_ids(
    *,
    text: str = "",
    correlation_id: str = "",
    after: datetime | None = None,
    before: datetime | None = None,
    search_below: int | None = None,
) -> tuple[list[int], list[Note], int | None]:
    """Ids of events (newest first, at most MATCHED_EVENTS) for the run filters that look at
    the triggering event, notes on how far the search went, and where a search further back
    would start (the lowest event id read; None when it read down to the first event).

    A text search reads at most TEXT_SEARCH_EVENTS events' data, by id range (a keyset
    window along the primary key): each page of search costs the same, however far back."""
    notes: list[Note] = []
    further: int | None = None
    events = Event.objects.order_by("-id")
    if correlation_id:
        events = events.filter(correlation_id=correlation_id)  # event_correlation_recent
    if text:
        newest = Event.objects.aggregate(top=Max("id"))["top"] or 0
        upper = newest + 1
        if before is not None:
            bound = first_event_id_at_or_after(before)
            upper = bound if bound is not None else upper
        if search_below is not None:
            upper = min(upper, search_below)
        lower = max(0, upper - TEXT_SEARCH_EVENTS)
        floor = 0
        if after is not None:
            floor = first_event_id_at_or_after(after - CLOCK_SLACK) or 0
            lower = max(lower, floor)
        # One more index probe says whether anything is left below the window.
        left = Event.objects.filter(id__lt=lower, id__gte=floor).order_by("-id").values("id")[:1]
        if list(left):
            further = lower
        events = (
            events.filter(id__gte=lower, id__lt=upper)
            .annotate(data_text=Cast("data", TextField()))
            .filter(Q(data_text__icontains=text) | Q(subject__icontains=text))
        )
    ids = list(events.values_list("id", flat=True)[: MATCHED_EVENTS + 1])
    if len(ids) > MATCHED_EVENTS:
        notes.append(Note(f"Showing runs of the newest {MATCHED_EVENTS:,} matching events."))
    if text and (search_below is not None or further is not None):
        span = f"events #{lower:,} to #{upper - 1:,}" if upper > lower else "no events"
        scope = "of the time range" if after or before else ""
        notes.append(
            Note(
                f"Text search read {span} ({TEXT_SEARCH_EVENTS:,} at most per page"
                + (f", {scope}" if scope else "")
                + ")."
                + ("" if further is not None else " There are no older events to search.")
            )
        )
    return ids[:MATCHED_EVENTS], notes, further


def first_event_id_at_or_after(when: datetime) -> int | None:
    """Events have an index on received_at: one lookup, no search."""
    row = Event.objects.filter(received_at__gte=when).order_by("received_at").values("id")[:1]
    found = list(row)
    if found:
        return found[0]["id"]
    return (Event.objects.aggregate(top=Max("id"))["top"] or 0) + 1


def runs_queryset(query: RunQuery, *, hidden: frozenset[int] = frozenset()):
    """The filtered runs, newest first, before any page limit; plus notes."""
    notes: list[Note] = []
    # Shadow runs are findings of their batch (its page lists them), not the workflow's work;
    # tries of the draft are the editor's, shown here only when asked for.
    unlisted = [SHADOW] if query.tries else [SHADOW, TRY]
    qs = Run.objects.select_related("workflow", "version").exclude(origin__in=unlisted)
    qs = qs.order_by("-id")
    if hidden:
        qs = qs.exclude(workflow_id__in=sorted(hidden))
    if query.workflow:
        workflow_id = Workflow.objects.filter(slug=query.workflow).values_list("id", flat=True)
        found = list(workflow_id)
        qs = qs.filter(workflow_id=found[0] if found else -1)
    if query.status:
        qs = qs.filter(status=query.status)
    if query.after is not None:
        lower = first_id_at_or_after(Run, "created_at", query.after - CLOCK_SLACK)
        if lower is not None:
            qs = qs.filter(id__gte=lower)
        qs = qs.filter(created_at__gte=query.after)
    if query.before is not None:
        upper = first_id_at_or_after(Run, "created_at", query.before + CLOCK_SLACK)
        if upper is not None:
            qs = qs.filter(id__lt=upper)
        qs = qs.filter(created_at__lt=query.before)
    if query.correlation_id or query.q:
        # Through the event index (every run carries its trigger event's correlation id),
        # then Run.event_id's index: no index on Run.correlation_id is needed.
        event_ids, event_notes, further = matching_event_ids(
            text=query.q,
            correlation_id=query.correlation_id,
            after=query.after,
            before=query.before,
            search_below=query.search_below,
        )
        if further is not None:
            # The next window of events, from the newest run again.
            link = replace(query, search_below=further, before_id=None).querystring()
            event_notes[-1] = Note(event_notes[-1].text, further=link)
        notes += event_notes
        qs = qs.filter(event_id__in=event_ids)
    if query.before_id is not None:
        qs = qs.filter(id__lt=query.before_id)
    return qs, notes


def run_page(query: RunQuery, *, hidden: frozenset[int] = frozenset()) -> RunPage:
    qs, notes = runs_queryset(query, hidden=hidden)
    rows = list(qs[: query.limit + 1])
    page = RunPage(runs=rows[: query.limit], more=len(rows) > query.limit, notes=notes)
    page.newest_query = query.querystring()
    page.older_query = query.querystring(before_id=page.next_before_id) if page.more else ""
    return page
