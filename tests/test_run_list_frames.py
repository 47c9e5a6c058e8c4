"""Run list frames that carry only what changed (dashboard/live/run_list_frames.py): applied the
way static/js/dashboard-live.js applies them, they leave the page exactly as the whole
render would."""

from __future__ import annotations

import re

from dashboard.live.run_list_frames import RunRows

PAGE = 3
PLACEHOLDER = '<tr class="empty"><td colspan="7">No runs yet.</td></tr>'


def row(run_id: int, status: str) -> str:
    return (
        f'<tr id="run-{run_id}" data-status="{status}" data-event="{run_id}">'
        f"<td>#{run_id}</td></tr>"
    )


def render(runs: list[tuple[int, str]], *, more: bool = False) -> RunRows:
    """What render_run_rows makes of these runs (newest first), with the same markup."""
    body = "\n".join("  " + row(*run) for run in runs) or PLACEHOLDER
    pager = (
        f'<nav class="pager" id="run-pager" hx-swap-oob="outerHTML">{"Older" if more else ""}</nav>'
    )
    return RunRows(
        rows_html=(
            f'<tbody id="run-rows" data-max-rows="{PAGE}" hx-swap-oob="outerHTML">\n'
            f"{body}\n</tbody>"
        ),
        pager_html=pager,
        limit=PAGE,
    )


TBODY = re.compile(r'<tbody( id="run-rows")?([^>]*)>(.*?)</tbody>', re.S)
NAV = re.compile(r'<nav [^>]*id="run-pager".*?</nav>', re.S)
ANY_ROW = re.compile(r'<tr id="run-(\d+)".*?</tr>|<tr class="empty">.*?</tr>', re.S)


def apply(page: dict, frame: str) -> dict:
    """dashboard-live.js's swaps on a page modelled as its rows (id -> HTML, in order)
    and its pager."""
    rows, pager = dict(page["rows"]), page["pager"]
    for has_id, attributes, body in TBODY.findall(frame):
        incoming = [(m.group(1) and int(m.group(1)), m.group(0)) for m in ANY_ROW.finditer(body)]
        if not has_id:  # rows swapped one by one, by their ids
            for run_id, html in incoming:
                if run_id in rows:
                    rows[run_id] = html
        elif 'hx-swap-oob="afterbegin"' in attributes:
            rows = dict(incoming + list(rows.items()))
            rows = dict(list(rows.items())[:PAGE])  # data-max-rows
        else:
            rows = dict(incoming)
    for nav in NAV.findall(frame):
        pager = nav
    return {"rows": rows, "pager": pager}


def shown(frame: str) -> dict:
    return apply({"rows": {}, "pager": ""}, frame)


def test_a_status_change_sends_only_that_row():
    before = render([(3, "running"), (2, "succeeded"), (1, "failed")])
    after = render([(3, "succeeded"), (2, "succeeded"), (1, "failed")])

    frame = after.since(before)

    assert frame == f"<tbody>{row(3, 'succeeded')}</tbody>"
    assert apply(shown(before.full), frame) == shown(after.full)


def test_new_runs_are_prepended_and_the_page_keeps_its_size():
    before = render([(3, "running"), (2, "succeeded"), (1, "failed")])
    after = render([(5, "queued"), (4, "queued"), (3, "succeeded")], more=True)

    frame = after.since(before)

    assert 'hx-swap-oob="afterbegin"' in frame
    assert 'id="run-2"' not in frame and 'id="run-1"' not in frame
    assert apply(shown(before.full), frame) == shown(after.full)


def test_a_page_that_loses_a_row_gets_the_whole_page():
    # A status filter: the run that changed status leaves the page.
    before = render([(3, "failed"), (2, "failed"), (1, "failed")])
    after = render([(3, "failed"), (1, "failed")])

    assert after.since(before) == after.full


def test_the_first_run_replaces_the_empty_pages_placeholder():
    before = render([])
    after = render([(1, "queued")])

    frame = after.since(before)

    assert frame == after.full
    assert apply(shown(before.full), frame) == shown(after.full)


def test_a_render_that_changes_nothing_sends_nothing():
    before = render([(2, "running"), (1, "failed")])
    again = render([(2, "running"), (1, "failed")])

    assert again.since(before) is None
    assert again.since(again) is None


def test_a_snapshot_is_the_whole_page():
    page = render([(1, "queued")])

    assert page.since(None) == page.full


def test_pages_in_the_same_state_get_the_very_same_frame():
    before = render([(2, "running"), (1, "failed")])
    after = render([(2, "succeeded"), (1, "failed")])

    assert after.since(before) is after.since(before)


def test_a_delta_keeps_no_earlier_render_alive():
    import gc
    import weakref

    first = render([(1, "queued")])
    second = render([(1, "running")])
    second.since(first)
    gone = weakref.ref(first)
    del first
    gc.collect()

    assert gone() is None


def test_the_live_render_is_the_run_pages_own_markup_before_and_after_a_change(
    transactional_db,
):
    from django.template.loader import render_to_string
    from django.utils import timezone

    from dashboard.live.consumers import render_run_rows
    from tests.factories import definition, log_step
    from tests.runs_here import publish, trigger
    from workflows.queries import dashboard as ds
    from workflows.runs.models import Run

    publish("orders", definition(log_step("received")))
    runs = [trigger("orders") for _ in range(3)]
    query, _errors = ds.parse_run_query({})

    def page_markup() -> str:
        page = ds.run_page(query)
        context = {"runs": page.runs, "page": page, "query": query, "oob": True}
        return render_to_string("dashboard/_run_rows.html", context) + render_to_string(
            "dashboard/_run_pager.html", context
        )

    first = render_run_rows(query, frozenset())
    assert first.full == page_markup()

    # Rows come from the process's row cache now: a changed run is rendered anew.
    Run.objects.filter(pk=runs[1].pk).update(status="failed", finished_at=timezone.now())
    second = render_run_rows(query, frozenset())

    assert second.full == page_markup()
    assert f'<tr id="run-{runs[1].pk}" data-status="failed"' in second.since(first)


def test_a_live_render_of_rows_already_rendered_reads_the_runs_as_one_query_of_tuples(
    transactional_db,
):
    from django.db import connection
    from django.template.loader import render_to_string
    from django.test.utils import CaptureQueriesContext

    from dashboard.live.consumers import render_run_rows
    from tests.factories import definition, log_step
    from tests.runs_here import publish, trigger
    from workflows.queries import dashboard as ds

    publish("orders", definition(log_step("received")))
    for _ in range(3):
        trigger("orders")
    query, _errors = ds.parse_run_query({"limit": "2"})
    page = ds.run_page(query)
    context = {"runs": page.runs, "page": page, "query": query, "oob": True}
    whole = render_to_string("dashboard/_run_rows.html", context) + render_to_string(
        "dashboard/_run_pager.html", context
    )

    first = render_run_rows(query, frozenset())
    with CaptureQueriesContext(connection) as queries:
        again = render_run_rows(query, frozenset())

    # The pager links to the older page as run_page's does, and no run is loaded whole.
    assert first.full == again.full == whole
    assert 'rel="next"' in whole
    assert len(queries) == 1, [q["sql"] for q in queries]


def test_a_row_rendered_from_the_fields_the_list_reads_is_the_row_rendered_from_the_run(db):
    # page_rows renders new rows from its one query's tuples, never loading the run: that
    # holds only while _run_row.html shows nothing beyond row_key.
    from django.template.loader import get_template

    from dashboard.live.run_list_frames import ROW_FIELDS, row_key, shown_run
    from tests.factories import definition, log_step
    from tests.runs_here import drive, publish, trigger
    from workflows.runs.models import Run

    publish("orders", definition(log_step("received")))
    runs = [trigger("orders"), drive(trigger("orders"))]
    Run.objects.filter(pk=runs[0].pk).update(status="failed")  # the replay tick box
    template = get_template("dashboard/_run_row.html")
    for run in Run.objects.select_related("workflow", "version").filter(
        pk__in=[r.pk for r in runs]
    ):
        key = Run.objects.filter(pk=run.pk).values_list(*ROW_FIELDS).get()
        assert key == row_key(run)
        assert template.render({"run": shown_run(key)}) == template.render({"run": run})
