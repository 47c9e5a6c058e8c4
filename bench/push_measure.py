"""One bench.push phase: pages open, probes sent (with load, if any), and where the time from
accepted to seen went, from the pages, the API and the web process's own log."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from bench.push_load import Load, send_probes
from bench.push_pages import collect, open_pages
from bench.results import percentile


@dataclass
class Latency:
    name: str
    pages: int
    probes: int
    seen_ms: list[float] = field(repr=False)
    done_ms: list[float] = field(repr=False)
    # From the run's finished_at (committed) to the page seeing it: the push path alone.
    push_ms: list[float] = field(repr=False, default_factory=list)
    # Per probe, where the time before the push goes: the 202 to the run's created_at
    # (ingest, bus, match), and created_at to finished_at (queue and engine).
    match_ms: list[float] = field(repr=False, default_factory=list)
    engine_ms: list[float] = field(repr=False, default_factory=list)
    # The web process's own share, from its log (dashboard/live/push_timing.py), one value per
    # frame: commit -> the last socket written, the render, and the writes to every page.
    server_ms: list[float] = field(repr=False, default_factory=list)
    render_ms: list[float] = field(repr=False, default_factory=list)
    write_ms: list[float] = field(repr=False, default_factory=list)
    # Finer parts of the server's share, per frame: commit -> the hint read by the web
    # process, hint read -> render began, render began -> its computation began in the
    # database thread, and the garbage collections that ran between commit and last write.
    hint_ms: list[float] = field(repr=False, default_factory=list)
    queued_ms: list[float] = field(repr=False, default_factory=list)
    thread_ms: list[float] = field(repr=False, default_factory=list)
    gc_ms: list[float] = field(repr=False, default_factory=list)
    missed: int = 0
    frames_per_page: float = 0.0
    load_events_per_s: float = 0.0
    note: str = ""

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("seen_ms")
        data.pop("done_ms")
        data.pop("push_ms")
        data.pop("match_ms")
        data.pop("engine_ms")
        parts = ("server", "render", "write", "hint", "queued", "thread", "gc")
        for name in parts:
            data.pop(f"{name}_ms")
        for label, values in (
            *((name, getattr(self, f"{name}_ms")) for name in parts),
            ("seen", self.seen_ms),
            ("succeeded", self.done_ms),
            ("push", self.push_ms),
            ("match", self.match_ms),
            ("engine", self.engine_ms),
        ):
            for q in (50, 95, 99):
                data[f"{label}_p{q}_ms"] = round(percentile(values, q / 100), 1)
        return data


def measure(
    name: str,
    stack_url: str,
    cookie: str,
    token: str,
    *,
    pages: int,
    probes: int,
    interval: float,
    workers: int,
    load_rate: float = 0.0,
    runs_share: float = 0.0,
    tag: str,
    server_log: Path | None = None,
) -> Latency:
    log_from = server_log.stat().st_size if server_log and server_log.exists() else 0
    ws_url = stack_url.replace("http://", "ws://") + "/ws/runs/?workflow=bench-push&ack=1"
    headers = {"Cookie": f"sessionid={cookie}", "Origin": stack_url}
    duration = probes * interval + 8.0
    opened = open_pages(ws_url, headers, pages, duration=duration, workers=workers)
    load = Load(stack_url, token, load_rate, tag, runs_share=runs_share) if load_rate else None
    with httpx.Client(
        base_url=stack_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        if load:
            load.__enter__()
            time.sleep(3)  # let the load reach its pace
        opened.go.set()
        accepted = send_probes(client, probes, interval, f"{tag}-probe")
        if load:
            load.__exit__(None, None, None)
    firsts, dones, frames = collect(opened)
    served = frames_served(server_log, log_from) if server_log else []
    times = run_times(stack_url, token, set(accepted))
    finished = {event_id: t["finished_at"] for event_id, t in times.items() if t["finished_at"]}
    match_ms = [
        (t["created_at"] - accepted[event_id]) * 1000
        for event_id, t in times.items()
        if t["created_at"]
    ]
    engine_ms = [
        (t["finished_at"] - t["created_at"]) * 1000
        for t in times.values()
        if t["created_at"] and t["finished_at"]
    ]
    seen_ms, done_ms, push_ms, missed = [], [], [], 0
    for first, done in zip(firsts, dones, strict=True):
        for event_id, at in accepted.items():
            if event_id in first:
                seen_ms.append((first[event_id] - at) * 1000)
            if event_id in done:
                done_ms.append((done[event_id] - at) * 1000)
                if event_id in finished:
                    push_ms.append((done[event_id] - finished[event_id]) * 1000)
            else:
                missed += 1
    return Latency(
        name=name,
        pages=opened.opened,
        probes=len(accepted),
        seen_ms=seen_ms,
        done_ms=done_ms,
        push_ms=push_ms,
        match_ms=match_ms,
        engine_ms=engine_ms,
        server_ms=[f["commit_to_written_ms"] for f in served if f["commit_to_written_ms"]],
        render_ms=[f["render_ms"] for f in served],
        write_ms=[f["write_ms"] for f in served],
        hint_ms=[f["hint_ms"] for f in served if f.get("hint_ms") is not None],
        queued_ms=[f["queued_ms"] for f in served if f.get("queued_ms") is not None],
        thread_ms=[f["to_thread_ms"] for f in served if f.get("to_thread_ms") is not None],
        gc_ms=[f["gc_ms"] for f in served if "gc_ms" in f],
        missed=missed,
        frames_per_page=round(sum(frames) / max(1, len(frames)), 1),
        load_events_per_s=round(load.sent / load.seconds, 1) if load else 0.0,
    )


def frames_served(server_log: Path, offset: int) -> list[dict]:
    """The run list frames the web process logged serving since `offset` of its log."""
    from dashboard.live.push_timing import PREFIX

    found = []
    with server_log.open("rb") as log:
        log.seek(offset)
        for line in log.read().decode(errors="replace").splitlines():
            at = line.find(PREFIX)
            if at >= 0:
                frame = json.loads(line[at + len(PREFIX) :])
                if frame["key"] == "runs":
                    found.append(frame)
    return found


def run_times(base_url: str, token: str, event_ids: set[int]) -> dict[int, dict]:
    """event id -> the probe run's created_at and finished_at (unix seconds or None), from
    the API."""
    found: dict[int, dict] = {}
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        runs = client.get("/api/v1/runs", params={"workflow": "bench-push", "limit": 500})
        for run in runs.json().get("runs", []):
            if run["event"] in event_ids:
                found[run["event"]] = {
                    name: datetime.fromisoformat(run[name]).timestamp() if run.get(name) else None
                    for name in ("created_at", "finished_at")
                }
    return found


def print_row(result: Latency) -> None:
    s = result.summary()
    print(
        f"{result.name:<40}{result.pages:>6}{result.probes:>7}"
        f"{s['seen_p50_ms']:>9.0f}{s['succeeded_p50_ms']:>9.0f}{s['succeeded_p95_ms']:>9.0f}"
        f"{s['succeeded_p99_ms']:>9.0f}{s['push_p50_ms']:>9.0f}{s['push_p95_ms']:>9.0f}"
        f"{s['push_p99_ms']:>9.0f}{result.missed:>8}{result.frames_per_page:>8}"
        f"{result.load_events_per_s:>9}{s['match_p50_ms']:>9.0f}{s['engine_p50_ms']:>9.0f}"
        f"{s['server_p50_ms']:>9.0f}{s['server_p99_ms']:>9.0f}{s['render_p50_ms']:>9.1f}"
        f"{s['write_p50_ms']:>9.1f}",
        flush=True,
    )
    print(
        f"{'':<40}  srv p50/p95/p99 {s['server_p50_ms']:.1f}/{s['server_p95_ms']:.1f}/"
        f"{s['server_p99_ms']:.1f}; per frame p50/p99: hint {s['hint_p50_ms']:.1f}/"
        f"{s['hint_p99_ms']:.1f}, queued {s['queued_p50_ms']:.1f}/{s['queued_p99_ms']:.1f}, "
        f"to thread {s['thread_p50_ms']:.1f}/{s['thread_p99_ms']:.1f}, render "
        f"{s['render_p50_ms']:.1f}/{s['render_p99_ms']:.1f}, write {s['write_p50_ms']:.1f}/"
        f"{s['write_p99_ms']:.1f}, gc {s['gc_p50_ms']:.1f}/{s['gc_p99_ms']:.1f} ms",
        flush=True,
    )
