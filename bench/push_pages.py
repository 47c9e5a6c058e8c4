"""bench.push's pages: dashboard run lists held open over WebSockets by client processes,
noting when each page first sees a probe's run and sees it succeeded."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import re
import time
from dataclasses import dataclass

ROW = re.compile(r'<tr id="run-(\d+)" data-status="(\w+)" data-event="(\d*)"')


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
