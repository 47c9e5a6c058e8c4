"""bench.engine's measurements and what is printed of them: the table beside bare Celery,
the per-step cost we track, where a run's time goes, and the in-process profile."""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field

from bench.engine_shapes import CELERY, SHAPES, SIGNALBOX
from bench.results import percentile


@dataclass
class Measurement:
    system: str  # SIGNALBOX or CELERY
    shape: str
    workers: int
    runs: int
    steps: int  # per run
    seconds: float  # first accepted -> last finished
    latencies_ms: list[float] = field(repr=False)
    failed: int = 0
    note: str = ""
    breakdown: dict[str, float] = field(default_factory=dict)
    # CPU of the stack's processes (bus consumers, scheduler, worker pool) per run while
    # the shape ran; the baseline's counts only its worker (nothing else works for it).
    cpu_ms_per_run: float = 0.0

    @property
    def finished(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0

    @property
    def steps_rate(self) -> float:
        return self.rate * self.steps

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def summary(self) -> dict:
        data = asdict(self)
        data["latencies_ms"] = [round(x, 1) for x in self.latencies_ms]
        return {
            **data,
            "runs_per_s": round(self.rate, 2),
            "steps_per_s": round(self.steps_rate, 1),
            "p50_ms": round(self.p50, 1),
            "p99_ms": round(self.p99, 1),
            "cpu_ms_per_run": self.cpu_ms_per_run,
        }


def ratios(ours: Measurement, base: Measurement | None) -> dict[str, float]:
    if base is None or not ours.finished or not base.finished:
        return {}
    return {
        "runs_per_s_baseline_over_ours": round(base.rate / ours.rate, 2) if ours.rate else 0,
        "p50_ours_over_baseline": round(ours.p50 / base.p50, 2) if base.p50 else 0,
        "p99_ours_over_baseline": round(ours.p99 / base.p99, 2) if base.p99 else 0,
    }


def per_step(measurements: list[Measurement]) -> list[dict]:
    """The figure we track: one step's cost, ours against bare Celery.

    Sequential: the chain of 40 run alone, p50 latency / 40 (every hop in line, nothing
    else queued). Saturated: the fan-out's wall time per step (the pool kept busy).
    """
    found = {(m.system, m.shape, m.workers): m for m in measurements}
    rows = []
    for workers in sorted({m.workers for m in measurements}):
        for shape, what in (("chain-40-alone", "sequential"), ("fan-out", "saturated")):
            ours, base = found.get((SIGNALBOX, shape, workers)), found.get((CELERY, shape, workers))
            if not ours or not base or not ours.finished or not base.finished:
                continue
            if what == "sequential":
                our_ms, base_ms = ours.p50 / ours.steps, base.p50 / base.steps
            else:
                our_ms, base_ms = 1000 / ours.steps_rate, 1000 / base.steps_rate
            rows.append({
                "workers": workers, "measure": what, "shape": shape,
                "ours_ms_per_step": round(our_ms, 2), "baseline_ms_per_step": round(base_ms, 2),
                "ratio": round(our_ms / base_ms, 1) if base_ms else None,
            })  # fmt: skip
    return rows


def print_table(measurements: list[Measurement]) -> None:
    found = {(m.system, m.shape, m.workers): m for m in measurements}
    print()
    print(
        f"{'shape':<28}{'w':>2}{'N':>4} |{'runs/s':>8}{'steps/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'cpu/run':>8} |{'runs/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu/run':>8}"
        f" |{'slower':>7}{'p50 x':>7}"
    )
    print(f"{'':<34} |{'Signalbox':^43} |{'bare Celery':^32} |{'ours/baseline':^14}")
    labels = {s.key: s.label for s in SHAPES}
    for m in measurements:
        if m.system != SIGNALBOX:
            continue
        base = found.get((CELERY, m.shape, m.workers))
        r = ratios(m, base)
        line = (
            f"{labels[m.shape]:<28}{m.workers:>2}{m.runs:>4} |{m.rate:>8.2f}{m.steps_rate:>9.1f}"
            f"{m.p50:>9.0f}{m.p99:>9.0f}{m.cpu_ms_per_run:>8.1f} |"
        )
        if base:
            line += (
                f"{base.rate:>8.2f}{base.p50:>8.0f}{base.p99:>8.0f}{base.cpu_ms_per_run:>8.1f} |"
            )
            line += f"{r.get('runs_per_s_baseline_over_ours', 0):>6.1f}x"
            line += f"{r.get('p50_ours_over_baseline', 0):>6.1f}x"
        notes = "; ".join(n for n in (m.note, base.note if base else "") if n)
        print(line + (f"  ({notes})" if notes else ""))


def print_breakdowns(measurements: list[Measurement]) -> None:
    print("\nwhere a run's time goes (Signalbox, medians in ms, from the database's timestamps):")
    print(
        f"{'shape':<28}{'w':>2} |{'accepted->run':>14}{'->1st step':>12}"
        f"{'step hop':>10}{'in step':>9}{'->finished_at':>15}"
    )
    labels = {s.key: s.label for s in SHAPES}
    for m in measurements:
        if m.system != SIGNALBOX or not m.breakdown:
            continue
        b = m.breakdown
        print(
            f"{labels[m.shape]:<28}{m.workers:>2} |{b['accepted_to_run_created_ms']:>14.1f}"
            f"{b['accepted_to_first_step_started_ms']:>12.1f}"
            f"{b['step_enqueued_to_started_ms']:>10.1f}{b['step_started_to_finished_ms']:>9.1f}"
            f"{b.get('accepted_to_finished_at_ms', float('nan')):>15.1f}"
        )


def print_profile(profile: dict) -> None:
    if not profile.get("parts"):
        print(f"\nprofile: {profile.get('note', 'nothing measured')}")
        return
    print(
        f"\none step's parts, {profile['steps']} steps of a {profile['shape']} run in this "
        f"process (no Celery hop; run {profile['run_status']}):"
    )
    print(f"  {'part':<52}{'ms/step':>8}{'calls':>7}{'own SQL':>9}")
    order = sorted(profile["parts"].items(), key=lambda item: -item[1]["ms_per_step"])
    for part, v in order:
        print(
            f"  {part:<52}{v['ms_per_step']:>8.2f}{v['calls_per_step']:>7.2f}"
            f"{v['own_sql_per_step']:>9.2f}"
        )
    grouped = collections.Counter(profile.get("sql_of_one_step", []))
    print("  SQL of one step in the middle of the chain, [part] statement x count:")
    for statement, count in sorted(grouped.items(), key=lambda item: -item[1]):
        print(f"    {statement} x{count}")


def twin(measurements: list[Measurement], m: Measurement) -> Measurement | None:
    return next(
        (b for b in measurements
         if b.system == CELERY and b.shape == m.shape and b.workers == m.workers),
        None,
    )  # fmt: skip
