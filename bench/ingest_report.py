"""bench.ingest's rows: their names, the table printed, and the performance goals checked."""

from __future__ import annotations

from bench.results import Result

DURABLE = "durable baseline: bare Django view, INSERT+commit+XADD (gunicorn, 2 sync workers)"
SINGLE = "HTTP ingest, single structured event"
BATCHES = "HTTP ingest, batch of {n}"
EMBEDDED = "HTTP ingest, single event, embedded default (SQLite)"
SINGLE_ALONE = "HTTP ingest, single structured event, web tier alone"
BATCHES_ALONE = "HTTP ingest, batch of {n}, web tier alone"


def ratio(result: Result, baseline: Result | None) -> str:
    if baseline is None or not baseline.rate:
        return ""
    return f"{result.rate / baseline.rate:.2f}x of baseline"


def print_table(rows: list[tuple[Result, Result | None]]) -> None:
    print()
    print(f"{'path':<44}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'errors':>8}")
    for result, baseline in rows:
        print(
            f"{result.name:<44}{result.rate:>10.1f}{result.p50:>9.1f}{result.p99:>9.1f}"
            f"{result.requests:>10}{result.errors:>8}  {ratio(result, baseline)}"
            + (f"  ({result.note})" if result.note else "")
        )


def check_targets(rows) -> dict[str, dict]:
    """The performance issue's goals for ingest, each with what this run measured: with
    every process running (the bus consumer matching each event on the same two cores),
    and for the ingest tier alone, as the durable baseline itself runs."""
    by_name = {r.name: (r, b) for r, b in rows}
    goals = {}
    for label, name in (("every process", SINGLE), ("web tier alone", SINGLE_ALONE)):
        if name in by_name and by_name[name][1] is not None:
            single, durable = by_name[name]
            goals[f"single >= 1.5x durable baseline ({label})"] = (
                single.rate / durable.rate,
                1.5,
                (single, durable),
            )
            goals[f"single p99 <= 25 ms ({label})"] = (
                25.0 / single.p99 if single.p99 else 0.0,
                1.0,
                (single,),
            )
    for name, (result, _b) in by_name.items():
        if name.startswith("HTTP ingest, batch"):
            label = "web tier alone" if name.endswith("alone") else "every process"
            goals[f"batches >= 10,000 events/s ({label})"] = (result.rate / 10_000, 1.0, (result,))
    if EMBEDDED in by_name:
        embedded = by_name[EMBEDDED][0]
        goals["embedded >= 1,000 events/s"] = (embedded.rate / 1000, 1.0, (embedded,))
        goals["embedded p99 <= 50 ms"] = (
            50.0 / embedded.p99 if embedded.p99 else 0.0,
            1.0,
            (embedded,),
        )
    print("\ngoals (value/goal >= 1 is met; a phase with refused or failed requests meets none):")
    out = {}
    for goal, (value, need, results) in goals.items():
        errors = sum(r.errors for r in results)
        met = value >= need and not errors
        note = f", {errors} errors" if errors else ""
        print(f"  {'met    ' if met else 'NOT MET'}  {goal}  ({value:.2f}{note})")
        out[goal] = {"value": round(value, 3), "met": met}
    return out
