"""`make soak`: a steady event rate for a long while with many dashboard pages open, on the
fault suite's stack (tests/chaos/harness.py) but with no faults. Reports errors, event
accepted -> run done percentiles per interval, frames and disconnects of the pages, and
each process's memory at the start and the end.

    python -m tests.chaos.soak [--minutes 10] [--rate 40] [--sockets 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import signal
import statistics
import sys
import time
from dataclasses import dataclass

import httpx
import psutil

from tests.chaos.harness import LOGS, ChaosStack, Load, settle
from tests.waiting import wait_until

PASSWORD = "soak-password-1-long-enough"
SINK_DELAY_SECONDS = 0.003


@dataclass
class Pages:
    """`count` run-list pages open over WebSockets, each acknowledging its frames as the
    browser's page does. They run in a process of their own (spawned): 200 pages receive
    and acknowledge thousands of frames a second, which in the soak's own process would
    starve the load generator and the sink of the GIL and slow the stack being measured."""

    url: str
    cookie: str
    count: int
    _process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> Pages:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._counts = context.Array("q", 3, lock=False)  # connected, frames, disconnects
        self._errors = context.Queue()
        self._seen_errors: list[str] = []
        self._process = context.Process(
            target=_run_pages,
            args=(self.url, self.cookie, self.count, self._stop, self._counts, self._errors),
            name="soak-pages",
            daemon=True,
        )
        self._process.start()
        return self

    @property
    def connected(self) -> int:
        return self._counts[0]

    @property
    def frames(self) -> int:
        return self._counts[1]

    @property
    def disconnects(self) -> int:
        return self._counts[2]

    @property
    def errors(self) -> list[str]:
        with contextlib.suppress(queue.Empty):
            while True:
                self._seen_errors.append(self._errors.get_nowait())
        if self._process is not None and self._process.exitcode not in (None, 0):
            return [*self._seen_errors, f"the pages' process exited {self._process.exitcode}"]
        return self._seen_errors

    def stop(self) -> None:
        if self._process is None:
            return
        self._stop.set()
        self._process.join(30)
        errors = self.errors  # drained before the process is gone for good
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)
        self._seen_errors = errors


def _run_pages(url: str, cookie: str, count: int, stop, counts, errors) -> None:
    """The pages' process: `count` sockets on one event loop; counts go back through
    shared memory, each error through a queue."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    origin = url.replace("ws://", "http://").split("/ws/")[0]
    headers = {"Cookie": f"sessionid={cookie}", "Origin": origin}

    async def page() -> None:
        try:
            async with connect(url, additional_headers=headers, open_timeout=60) as ws:
                counts[0] += 1
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(ws.recv(), timeout=0.5)
                    except TimeoutError:
                        continue
                    counts[1] += 1
                    await ws.send(json.dumps({"ack": counts[1]}))
        except ConnectionClosed as exc:
            counts[2] += 1
            errors.put(f"closed: {exc}")
        except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
            errors.put(f"{type(exc).__name__}: {exc}")

    async def all_pages() -> None:
        await asyncio.gather(*(page() for _ in range(count)))

    asyncio.run(all_pages())


def login(base_url: str, username: str) -> str:
    import re

    with httpx.Client(base_url=base_url, timeout=30) as client:
        page = client.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        client.post(
            "/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
            headers={"Referer": f"{base_url}/login/"},
        )
        if "sessionid" not in client.cookies:
            raise RuntimeError("the soak user could not sign in")
        return client.cookies["sessionid"]


def memory(stack: ChaosStack) -> dict[str, float]:
    """Resident memory of each process (MB), web and worker children counted apart."""
    found: dict[str, float] = {}
    for name, process in stack.processes.items():
        try:
            root = psutil.Process(process.pid)
            found[name] = root.memory_info().rss / 2**20
            for n, child in enumerate(root.children(recursive=True)):
                found[f"{name}/{n + 1}"] = child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            found[name] = 0.0
    return found


def latencies(stack: ChaosStack, since: float) -> list[float]:
    """Event accepted -> run done (ms) of the runs that finished since `since` (epoch)."""
    rows = stack.query(
        "SELECT extract(epoch FROM r.finished_at - e.received_at) * 1000 FROM workflows_run r"
        " JOIN workflows_event e ON e.id = r.event_id"
        " WHERE r.finished_at >= to_timestamp(%s)",
        (since,),
    )
    return sorted(float(ms) for (ms,) in rows)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def soak(stack: ChaosStack, *, seconds: float, rate: float, sockets: int, every: float) -> dict:
    env = {**stack.env, "DATABASE_URL": stack.database_url, "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
    stack.manage(["bootstrap", "--no-demo", "--username", "soak"], env=env)
    cookie = login(stack.base_url, "soak")
    ws_url = stack.base_url.replace("http://", "ws://") + "/ws/runs/?ack=1"
    pages = Pages(ws_url, cookie, sockets).start()
    # Measured with every page open: the pages' process takes a while to start when loaded.
    wait_until(
        lambda: pages.connected + len(pages.errors) >= sockets,
        timeout=180,
        message=f"{sockets} pages to connect",
    )
    load = Load(stack, rate, senders=max(1, round(rate / 4))).start()
    samples, started = [], time.time()
    memory_start = None
    try:
        while time.time() - started < seconds:
            window_start, accepted_before = time.time(), len(load.accepted)
            time.sleep(min(every, max(0.0, seconds - (time.time() - started))))
            done = latencies(stack, window_start)
            rss = memory(stack)
            sample = {
                "t": round(time.time() - started),
                "accepted": len(load.accepted),
                "accepted_in": len(load.accepted) - accepted_before,
                "errors": sum(n for s, n in load.statuses.items() if s not in (200, 201, 202)),
                "runs_done": len(done),
                "p50_ms": round(percentile(done, 50), 1),
                "p95_ms": round(percentile(done, 95), 1),
                "p99_ms": round(percentile(done, 99), 1),
                "pages": pages.connected - pages.disconnects,
                "frames": pages.frames,
                # Each process's resident memory at every sample: growth that levels off
                # is warm-up, growth at a steady slope a leak.
                "rss_mb": {k: round(v, 1) for k, v in rss.items()},
            }
            if memory_start is None:
                memory_start = rss  # after the first interval: warmed up
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    finally:
        load.stop()
    # At the end of the load, before the backlog (if any) is worked off; printed now, so a
    # soak stopped while it settles still tells.
    memory_end = memory(stack)
    print(json.dumps({"memory_start_mb": memory_start, "memory_end_mb": memory_end}), flush=True)
    outcome = settle(stack, load.accepted, statuses=load.statuses)
    pages.stop()
    return {
        "seconds": seconds,
        "rate": rate,
        "sockets": sockets,
        "samples": samples,
        "errors": sum(n for s, n in load.statuses.items() if s not in (200, 201, 202))
        + len(pages.errors),
        "page_errors": pages.errors[:10],
        "pages_connected": pages.connected,
        "frames": pages.frames,
        "memory_start_mb": {k: round(v, 1) for k, v in (memory_start or {}).items()},
        "memory_end_mb": {k: round(v, 1) for k, v in memory_end.items()},
        "outcome": outcome,
        "median_p50_ms": statistics.median([s["p50_ms"] for s in samples if s["runs_done"]] or [0]),
    }


def print_report(report: dict) -> None:
    print(f"\nsoak: {report['seconds']:.0f} s at {report['rate']} events/s, "
          f"{report['sockets']} pages ({report['pages_connected']} connected, "
          f"{report['frames']} frames); errors {report['errors']}")  # fmt: skip
    print(report["outcome"].summary())
    print(f"{'process':<14}{'start MB':>10}{'end MB':>10}{'growth':>9}")
    for name, end in report["memory_end_mb"].items():
        start = report["memory_start_mb"].get(name)
        growth = f"{end - start:+.1f}" if start is not None else "new"
        print(f"{name:<14}{start if start is not None else '-':>10}{end:>10}{growth:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=15, help="events per second")
    parser.add_argument("--sockets", type=int, default=200, help="dashboard pages open")
    parser.add_argument("--every", type=float, default=30, help="seconds per sample")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still clean up (finally below)
    # No faults here: the processes reach PostgreSQL and Redis directly, not through the
    # proxies in this process, and the sink answers in a few ms like a real API.
    stack = ChaosStack(proxied=False, sink_delay=SINK_DELAY_SECONDS, concurrency=args.concurrency)
    stack.start()
    try:
        report = soak(
            stack, seconds=args.minutes * 60, rate=args.rate, sockets=args.sockets,
            every=args.every,
        )  # fmt: skip
    finally:
        stack.stop()
    print_report(report)
    LOGS.mkdir(parents=True, exist_ok=True)
    saved = {**report, "outcome": report["outcome"].summary()}
    (LOGS / "soak-latest.json").write_text(json.dumps(saved, indent=2))
    ok = report["errors"] == 0 and report["outcome"].ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
