"""Frames of the live run list that carry only what changed.

A render of a run list page (`RunRows`) keeps the page's HTML whole (the snapshot) and cut
into its rows by run id. A page that already shows an earlier render gets only the
difference (`RunRows.since`):
- rows whose HTML changed, each swapped by its id (`<tr id="run-N">`, inside a <tbody>
  without an id, so that the browser's parser keeps the rows whole);
- new runs on top, prepended into #run-rows (hx-swap-oob="afterbegin"); the page drops
  the rows past its `data-max-rows` (the page size), as the full render would;
- the pager, when it changed.
Anything else (a filtered page that lost a row, an empty page) gets the whole page again.
What the browser shows afterwards is exactly the whole render: the rows are slices of it.

The difference is computed once per (earlier render, render) pair and the same string goes
to every page in that state: with 500 pages open a status change is a ~0.7 kB frame written
500 times instead of a ~30 kB one.

Rows are rendered once per state (`row_html`): a render of a page re-reads its runs but only
renders the rows that changed since any page of this process last showed them. Django's
templates take about 0.3 ms a row (the link, the dates), 15 ms for a page of 50, which was
most of the time from a commit to the frame. A render reads a page's runs as plain tuples
of the fields a row shows (`page_rows`), and renders a new row from its tuple: one query.
"""

from __future__ import annotations

import re
import threading
import weakref
from types import SimpleNamespace

from django.template.loader import get_template
from django.utils.safestring import SafeString

# One row of dashboard/_run_rows.html: from its opening tag to its closing tag (rows hold
# no nested table rows).
ROW = re.compile(r'<tr id="run-(\d+)".*?</tr>', re.S)
# Deltas kept per render, by the earlier render they start from: pages are in one or two
# states at a time (the latest render, or the one before while a window is full).
KEEP_DELTAS = 8
# Rendered rows kept per process (a few kB each), by what the row shows.
KEEP_ROWS = 4096

_rows: dict[tuple, SafeString] = {}
_rows_lock = threading.Lock()


# What a row shows, in the order of row_key, as a values_list of a runs queryset reads it.
ROW_FIELDS = (
    "pk",
    "status",
    "event_id",
    "workflow__slug",
    "version__number",
    "origin",  # a try shows a badge, not a version
    "started_at",
    "finished_at",
)


def row_key(run) -> tuple:
    """Every field dashboard/_run_row.html shows, as ROW_FIELDS reads them; whether a page
    may show the run at all is decided by its query, never here."""
    return (
        run.pk,
        run.status,
        run.event_id,
        run.workflow.slug,
        run.version.number,
        run.origin,
        run.started_at,
        run.finished_at,
    )


def shown_run(key: tuple) -> SimpleNamespace:
    """What dashboard/_run_row.html reads of a run, from its row_key: a row is a function
    of its key, so a row no page has shown yet is rendered without loading the run (a
    query per frame with a change, ~1 ms, more under load)."""
    pk, status, event_id, slug, number, origin, started_at, finished_at = key
    return SimpleNamespace(
        pk=pk,
        id=pk,
        status=status,
        event_id=event_id,
        workflow=SimpleNamespace(slug=slug),
        version=SimpleNamespace(number=number),
        origin=origin,
        started_at=started_at,
        finished_at=finished_at,
    )


def row_html(run) -> SafeString:
    """dashboard/_run_row.html for `run` (with its workflow and version loaded, or a
    shown_run), rendered once per state."""
    key = row_key(run)
    html = _rows.get(key)
    if html is None:
        html = SafeString(get_template("dashboard/_run_row.html").render({"run": run}))
        with _rows_lock:
            if len(_rows) >= KEEP_ROWS:
                _rows.clear()
            _rows[key] = html
    return html


def page_rows(runs, limit: int) -> tuple[list[SafeString], bool, int | None]:
    """The rendered rows of the first `limit` runs of `runs` (a runs queryset), whether
    more follow, and the last run's id.

    One query of plain tuples, the fields a row shows (ROW_FIELDS): a page of 50 runs
    built as models was most of a render. Rows in a state no page of this process has
    shown yet (one or two per frame) are rendered from those tuples (shown_run)."""
    keys = list(runs.values_list(*ROW_FIELDS)[: limit + 1])
    more = len(keys) > limit
    keys = keys[:limit]
    rows = [_rows.get(key) or row_html(shown_run(key)) for key in keys]
    return rows, more, keys[-1][0] if keys else None


class RunRows:
    """One render of a run list page."""

    __slots__ = ("__weakref__", "_deltas", "full", "ids", "limit", "pager", "rows")

    def __init__(self, *, rows_html: str, pager_html: str, limit: int) -> None:
        self.full = rows_html + pager_html
        self.pager = pager_html
        self.limit = limit
        self.rows: dict[int, str] = {}
        ids = []
        for match in ROW.finditer(rows_html):
            run_id = int(match.group(1))
            ids.append(run_id)
            self.rows[run_id] = match.group(0)
        self.ids = tuple(ids)
        self._deltas: dict[int, tuple[weakref.ref, str | None]] = {}

    def since(self, shown: RunRows | None) -> str | None:
        """The frame that turns a page showing `shown` into this render; None when there
        is nothing to change, the whole page when `shown` is None (a snapshot)."""
        if shown is None:
            return self.full
        if shown is self:
            return None
        kept = self._deltas.get(id(shown))
        if kept is not None and kept[0]() is shown:
            return kept[1]
        frame = self._delta(shown)
        if len(self._deltas) >= KEEP_DELTAS:
            self._deltas.clear()
        # A weak reference: a strong one would keep every earlier render alive, each
        # through the next.
        self._deltas[id(shown)] = (weakref.ref(shown), frame)
        return frame

    def _delta(self, shown: RunRows) -> str | None:
        if not self.ids or not shown.ids or self.limit != shown.limit:
            return self.full  # an empty page shows a placeholder row: swap it whole
        new = [run_id for run_id in self.ids if run_id not in shown.rows]
        # The page prepends the new rows and drops those past the page size.
        if tuple(new + list(shown.ids))[: self.limit] != self.ids:
            return self.full
        parts = []
        if new:
            parts.append(
                '<tbody id="run-rows" hx-swap-oob="afterbegin">'
                + "".join(self.rows[run_id] for run_id in new)
                + "</tbody>"
            )
        changed = [
            self.rows[run_id]
            for run_id in self.ids[len(new) :]
            if self.rows[run_id] != shown.rows[run_id]
        ]
        if changed:
            parts.append("<tbody>" + "".join(changed) + "</tbody>")
        if self.pager != shown.pager:
            parts.append(self.pager)
        return "".join(parts) or None
