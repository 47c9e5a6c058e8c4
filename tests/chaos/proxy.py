"""A TCP proxy with faults, in front of one service (Redis or PostgreSQL).

The processes under test reach the service only through it, so a scenario can add
latency, reset every open connection, refuse new ones (the service is "down" as far as
they can tell) or black-hole them: silence both ways and no new connection reaches the
service, until the black hole is lifted and what was held is delivered, as TCP does once a
partition heals. Only a client's own timeouts notice a black hole. It runs its own event
loop on a thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading


class FaultProxy:
    def __init__(
        self,
        target_port: int,
        *,
        name: str = "proxy",
        host: str = "127.0.0.1",
        keepalive: int = 0,
    ):
        self.target_port = target_port
        # Probe each client after this many idle seconds (0: never), as the service would
        # probe its own peer (keepalives, tcp_user_timeout): a client host that vanished
        # (cut off) then has its upstream connection closed, and the service drops the
        # session (PostgreSQL: its locks).
        self.keepalive = keepalive
        self.host = host  # where it listens (the service itself stays on loopback)
        self.name = name
        self.port = 0
        self.latency = 0.0
        self.refusing = False
        self.black_hole = False
        self._loop = asyncio.new_event_loop()
        self._clear: asyncio.Event | None = None  # set while not black-holed
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{name}", daemon=True)

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the {self.name} proxy did not start")
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._clear = asyncio.Event()
        self._clear.set()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        self.port = listener.getsockname()[1]
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=listener, backlog=512)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        await self._clear.wait()  # a black hole drops the handshake: the client's timeout counts
        client = writer.get_extra_info("socket")
        if self.keepalive and client is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.keepalive)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, self.keepalive // 2))
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
            # And an answer the client never acknowledges (it was cut off as it came): no
            # keepalive runs while data waits to be acknowledged.
            timeout_ms = (self.keepalive + 3 * max(1, self.keepalive // 2)) * 1000
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for each in (writer, up_writer):
                self._writers.discard(each)
                each.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if not self._clear.is_set():
                    await self._clear.wait()  # held: the peer waits for an answer
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    def _call(self, fn) -> None:
        done = threading.Event()

        def run():
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def reset(self) -> int:
        """Abort every open connection (both sides); returns how many there were."""
        count = len(self._writers) // 2

        def abort_all():
            for writer in list(self._writers):
                writer.transport.abort()

        self._call(abort_all)
        return count

    def down(self) -> None:
        """Refuse new connections and reset the open ones: the service is gone."""
        self.refusing = True
        self.reset()

    def up(self) -> None:
        self.refusing = False
        self.latency = 0.0
        self.set_black_hole(False)

    def connections(self) -> int:
        return len(self._writers) // 2

    def set_black_hole(self, on: bool) -> None:
        self.black_hole = on
        self._call(self._clear.clear if on else self._clear.set)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.reset()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
