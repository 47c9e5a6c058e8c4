"""Push benchmark: how long from an event accepted to its run's status on a connected page,
and how many dashboard pages one web process keeps current.

    python -m bench.push             # a throwaway stack (database, redis-server, web, worker,
                                     # bus consumer, scheduler); a few minutes on 2 cores
    python -m bench.push --quick     # fewer probes and client counts (a smoke run)
    python -m bench.push --web-command "{bin}/uvicorn --port {port} orchestrator.asgi:application"
                                     # another web server (web_command() is the default)

Phases, each bounded in events, clients and seconds, loopback only:
  (a) light: one page on /ws/runs/?workflow=bench-push; probe events one at a time, paced;
      latency = from the 202 of POST /api/v1/events to the frame in which the page sees the
      probe's run as `succeeded` (and, separately, first sees the run at all).
  (b) heavy: the same probes, with 100 pages open, while load threads send 200 events/s in
      batches (each a hint every web process must read and filter); 2.5% of them start runs
      of another workflow (each more hints), the rest start nothing.
  (c) clients: C pages (C = 100, 250, 500, 750, 1000 …) on the same socket, every frame
      acknowledged as the browser does; paced probes; p50/p95/p99 over every (page, probe)
      pair, and pages that missed a probe. The answer is the largest C whose p95 stays
      under one second.

Clients are websockets sans-I/O connections in worker processes (asyncio Protocols, the
receive time taken as the bytes arrive), sending the session cookie and an Origin header
like a browser; every frame is acknowledged as the browser does. The web process logs its
own share per frame (dashboard/live/push_timing.py): srv = commit -> last socket written,
and under each phase's row its parts per frame: commit -> hint read (the hop through Redis),
hint read -> render began, the hop to the render thread, render, writes, GC in between.
Results go to stdout and var/bench/push-*.json; docs/benchmarks.md ("Push") keeps the record.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # `python bench/push.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.machine import machine
from bench.push_load import LOAD_TYPE, PROBE_TYPE
from bench.push_measure import Latency, measure, print_row
from bench.stack import OUT, Stack
from orchestrator import servers

PASSWORD = "bench-push-password-1"


# --- the web server -----------------------------------------------------------------------------
def web_command(port: int, template: str | None = None) -> list[str]:
    """The web process's command: the one place to change it. `template` (--web-command) is a
    shell-like command line with {port} and {bin} (the virtualenv's bin directory), e.g.
    "{bin}/uvicorn --port {port} --loop uvloop orchestrator.asgi:application"."""
    bin_dir = Path(sys.executable).parent
    if template:
        return shlex.split(template.format(port=port, bin=bin_dir))
    # The server `make run` uses, with one process: the goal is stated per web process.
    return servers.web_command(sys.executable, host="127.0.0.1", port=port, workers=1)


class PushStack(Stack):
    """bench.stack's Stack with the web process started by web_command()."""

    def __init__(self, *args, web: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.web = web

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        if name == "web":
            args = web_command(self.port, self.web)
            # One log line per frame the Hub serves (dashboard/live/push_timing.py).
            env = {**(env or self.env), "SIGNALBOX_PUSH_TIMING": "1"}
        super()._spawn(name, args, env)


def drain(redis_url: str, prefix: str, timeout: float = 600) -> None:
    """Wait until the Celery queue is empty twice in a row: a phase's load must not delay
    the next phase's probes."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    key = f"{prefix}:celery:signalbox"
    deadline, empty = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and empty < 2:
        empty = empty + 1 if conn.llen(key) == 0 else 0
        time.sleep(0.5)


def login(base_url: str, username: str) -> str:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        page = client.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        done = client.post(
            "/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
            headers={"Referer": f"{base_url}/login/"},
        )
        if done.status_code not in (200, 302) or "sessionid" not in client.cookies:
            raise RuntimeError(f"could not sign in: {done.status_code}")
        return client.cookies["sessionid"]


def publish(client: httpx.Client, slug: str, event_type: str) -> None:
    body = {
        "name": slug,
        "triggers": [{"event": event_type}],
        "steps": [{"id": "log", "kind": "log", "config": {"message": "push"}}],
    }
    assert client.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert client.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server for the throwaway stack")
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between probes")
    parser.add_argument(
        "--load-rate",
        type=float,
        default=200.0,
        help="heavy phase: events/s sent beside the probes (see --runs-share)",
    )
    parser.add_argument("--heavy-pages", type=int, default=100, help="pages open, heavy phase")
    parser.add_argument(
        "--runs-share",
        type=float,
        default=0.025,
        help="heavy phase: share of the load events that start a run",
    )
    parser.add_argument("--clients", default="100,250,500,750,1000")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--web-command",
        help="the web server's command line instead of make run's; {port} and {bin} are "
        'filled in, e.g. "{bin}/uvicorn --port {port} orchestrator.asgi:application"',
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.probes, args.clients = 8, "100,500"
    counts = [int(c) for c in args.clients.split(",") if c]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tag = uuid.uuid4().hex[:8]
    print("starting a throwaway stack (database, redis-server, web, worker, bus, scheduler)")
    stack = PushStack(
        tag, args.database_url, settings="orchestrator.settings", web=args.web_command
    )
    try:
        stack.start()
        stack.env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
        stack.manage("bootstrap", "--no-demo", "--username", "bench-push")
        info = machine(stack.database_url, stack.redis_url)
        print(f"machine: {json.dumps(info)}", flush=True)
        with httpx.Client(
            base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {stack.token}"}
        ) as api:
            publish(api, "bench-push", PROBE_TYPE)
            publish(api, "bench-load", LOAD_TYPE)
        cookie = login(stack.base_url, "bench-push")
        common = {
            "stack_url": stack.base_url,
            "cookie": cookie,
            "token": stack.token,
            "workers": args.workers,
            "server_log": OUT / f"{stack.tag}-web.log",
        }
        results: list[Latency] = []
        print(
            f"\n{'phase':<40}{'pages':>6}{'probes':>7}{'seen50':>9}{'done50':>9}{'done95':>9}"
            f"{'done99':>9}{'push50':>9}{'push95':>9}{'push99':>9}{'missed':>8}{'frames':>8}"
            f"{'load/s':>9}{'match50':>9}{'engine50':>9}{'srv50':>9}{'srv99':>9}"
            f"{'render50':>9}{'write50':>9}"
        )
        phases = [
            ("light: 1 page, no load", 1, 0.0),
            (
                f"heavy: {args.heavy_pages} pages, load {args.load_rate:.0f} ev/s",
                args.heavy_pages,
                args.load_rate,
            ),
        ]
        for name, pages, rate in phases:
            results.append(
                measure(
                    name,
                    pages=pages,
                    probes=args.probes,
                    interval=args.interval,
                    load_rate=rate,
                    runs_share=args.runs_share,
                    tag=f"{tag}{len(results)}",
                    **common,
                )
            )
            print_row(results[-1])
            drain(stack.redis_url, f"bench-{tag}")
        capacity = 0
        for count in counts:
            result = measure(
                f"clients: {count} pages",
                pages=count,
                probes=args.probes,
                interval=max(args.interval, 1.0),
                tag=f"{tag}c{count}",
                **common,
            )
            results.append(result)
            print_row(result)
            p95 = result.summary()["succeeded_p95_ms"]
            if p95 < 1000 and not result.missed and result.pages == count:
                capacity = count
            else:
                break
        print(f"\nlargest page count with p95 under one second: {capacity}")
        for result in results:
            s = result.summary()
            if result.load_events_per_s:
                print(
                    f"{result.name}: accepted -> done p50 {s['succeeded_p50_ms']:.0f} ms = "
                    f"match p50 {s['match_p50_ms']:.0f} + engine p50 {s['engine_p50_ms']:.0f} "
                    f"+ push p50 {s['push_p50_ms']:.0f} ms (per-part medians)"
                )
            elif result.pages == 500:
                print(f"{result.name}: commit -> frame p99 {s['push_p99_ms']:.0f} ms")
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"push-{datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_text(
            json.dumps(
                {"machine": info, "capacity": capacity, "results": [r.summary() for r in results]},
                indent=2,
            )
        )
        print(f"written {path}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
