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
own share per frame (dashboard/live/push_timing.py): srv = commit -> last socket written.
Results go to stdout and var/bench/push-*.json; docs/benchmarks.md ("Push") keeps the record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import re
import shlex
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # `python bench/push.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.ingest import OUT, Stack, machine, percentile
from orchestrator import servers

PROBE_TYPE = "com.example.push.probe"
LOAD_TYPE = "com.example.push.load"  # starts a run of bench-load
NOISE_TYPE = "com.example.push.noise"  # starts nothing: ingest and hints only
ROW = re.compile(r'<tr id="run-(\d+)" data-status="(\w+)" data-event="(\d*)"')
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
    """bench.ingest's stack with the web process started by web_command()."""

    def __init__(self, *args, web: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.web = web

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        if name == "web":
            args = web_command(self.port, self.web)
            # One log line per frame the Hub serves (dashboard/live/push_timing.py).
            env = {**(env or self.env), "SIGNALBOX_PUSH_TIMING": "1"}
        super()._spawn(name, args, env)


# --- the pages (client processes) ---------------------------------------------------------------
# A page is an asyncio Protocol driving websockets' sans-I/O client: no task, no queue and no
# per-frame coroutine switch per page. The receive time is taken when the bytes arrive
# (data_received), before any parsing, and a frame's rows are read once per client process
# (every page gets the same bytes), so that a client process holding hundreds of pages adds
# as little of its own delay as it can to the figures.
class PageProtocol(asyncio.Protocol):
    def __init__(self, uri, headers: dict, parsed: dict, opened: asyncio.Future) -> None:
        from websockets.client import ClientProtocol

        self.ws = ClientProtocol(uri, max_size=2**24)
        self.headers = headers
        self.parsed = parsed
        self.opened = opened
        self.closed = asyncio.get_running_loop().create_future()
        self.transport = None
        self.first_seen: dict[int, float] = {}
        self.done_seen: dict[int, float] = {}
        self.frames = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        request = self.ws.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        now = time.time()  # as the bytes arrive
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if not self.opened.done():
                    if event.status_code == 101:
                        self.opened.set_result(True)
                    else:
                        self.opened.set_exception(RuntimeError(f"refused: {event.status_code}"))
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.frames += 1
                self.ws.send_text(b'{"ack": %d}' % self.frames)  # as the browser does
                for event_id, status in rows_of(self.parsed, bytes(event.data)):
                    self.first_seen.setdefault(event_id, now)
                    if status == "succeeded":
                        self.done_seen.setdefault(event_id, now)
        self._flush()

    def _flush(self) -> None:
        data = self.ws.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.send_close()
            self._flush()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)


def rows_of(parsed: dict, data: bytes) -> list[tuple[int, str]]:
    """(event id, status) of every run row in a frame, read once per distinct frame."""
    rows = parsed.get(data)
    if rows is None:
        text = data.decode()
        rows = [(int(m.group(3)), m.group(2)) for m in ROW.finditer(text) if m.group(3)]
        if len(parsed) > 1024:
            parsed.clear()
        parsed[data] = rows
    return rows


def _client_process(url: str, headers: dict, count: int, duration: float, out, go, ready) -> None:
    """Open `count` pages, report when connected, keep them until `duration` after `go`."""
    from websockets.uri import parse_uri

    async def main():
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        parsed: dict = {}
        pages: list[PageProtocol] = []
        for n in range(count):
            opened = loop.create_future()
            _, page = await loop.create_connection(
                lambda opened=opened: PageProtocol(uri, headers, parsed, opened),
                uri.host,
                uri.port,
            )
            pages.append(page)
            if n % 25 == 24:  # do not storm the server's accept queue
                await asyncio.wait_for(asyncio.gather(*(p.opened for p in pages)), 120)
        await asyncio.wait_for(asyncio.gather(*(p.opened for p in pages)), 120)
        ready.put(len(pages))
        await loop.run_in_executor(None, go.wait, 600)
        await asyncio.sleep(duration)
        for page in pages:
            page.close()
        await asyncio.wait_for(asyncio.gather(*(p.closed for p in pages)), 60)
        out.put(
            {
                "first": [p.first_seen for p in pages],
                "done": [p.done_seen for p in pages],
                "frames": [p.frames for p in pages],
            }
        )

    asyncio.run(main())


@dataclass
class Pages:
    processes: list
    out: object
    go: object
    opened: int


def open_pages(url: str, headers: dict, count: int, *, duration: float, workers: int) -> Pages:
    ctx = multiprocessing.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    processes = [
        ctx.Process(
            target=_client_process, args=(url, headers, n, duration, out, go, ready), daemon=True
        )
        for n in shares
        if n
    ]
    for process in processes:
        process.start()
    opened = sum(ready.get(timeout=300) for _ in processes)
    return Pages(processes, out, go, opened)


def collect(pages: Pages) -> tuple[list[dict], list[dict], list[int]]:
    firsts, dones, frames = [], [], []
    for _ in pages.processes:
        got = pages.out.get(timeout=900)
        firsts += got["first"]
        dones += got["done"]
        frames += got["frames"]
    for process in pages.processes:
        process.join(30)
    return firsts, dones, frames


# --- events -----------------------------------------------------------------------------------
def event(type_: str, n: int, tag: str) -> dict:
    return {
        "specversion": "1.0",
        "id": f"{tag}-{n}",
        "source": "/bench/push",
        "type": type_,
        "subject": f"s-{n % 16}",
        "datacontenttype": "application/json",
        "data": {"n": n},
    }


def send_probes(client: httpx.Client, count: int, interval: float, tag: str) -> dict[int, float]:
    accepted: dict[int, float] = {}
    for n in range(count):
        began = time.monotonic()
        response = client.post(
            "/api/v1/events",
            json=event(PROBE_TYPE, n, tag),
            headers={"Content-Type": "application/cloudevents+json"},
        )
        if response.status_code == 202:
            accepted[response.json()["id"]] = time.time()
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    return accepted


class Load:
    """Threads that keep sending batches of LOAD_TYPE events (each starts a run) at about
    `rate` events per second until stopped."""

    def __init__(
        self,
        base_url: str,
        token: str,
        rate: float,
        tag: str,
        *,
        runs_share: float,
        threads: int = 2,
    ):
        self.stop = threading.Event()
        self.every = max(1, round(1 / runs_share)) if runs_share > 0 else 0
        self.sent = 0
        self.errors = 0
        self.threads = [
            threading.Thread(
                target=self._run, args=(base_url, token, rate / threads, f"{tag}-{i}"), daemon=True
            )
            for i in range(threads)
        ]

    def _run(self, base_url: str, token: str, rate: float, tag: str) -> None:
        batch = 20
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/cloudevents-batch+json",
        }
        with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
            n = 0
            while not self.stop.is_set():
                began = time.monotonic()
                body = [
                    event(
                        LOAD_TYPE if self.every and (n + k) % self.every == 0 else NOISE_TYPE,
                        n + k,
                        tag,
                    )
                    for k in range(batch)
                ]
                response = client.post("/api/v1/events", json=body)
                if response.status_code == 202:
                    self.sent += batch
                else:
                    self.errors += 1
                n += batch
                time.sleep(max(0.0, batch / rate - (time.monotonic() - began)))

    def __enter__(self):
        self.began = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        self.seconds = time.monotonic() - self.began


# --- results ----------------------------------------------------------------------------------
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
        for name in ("server_ms", "render_ms", "write_ms"):
            data.pop(name)
        for label, values in (
            ("server", self.server_ms),
            ("render", self.render_ms),
            ("write", self.write_ms),
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
