"""dashboard/live/frame_writer.py against uvicorn's own WebSocket protocol: the bytes written
directly are the bytes the server's send writes, and a socket that cannot take them as
they are (an extension negotiated, writing paused, closing) is left to the server."""

from __future__ import annotations

import asyncio

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.uri import parse_uri

from dashboard.live.frame_writer import direct_writer, encoded


class Transport:
    """The asyncio transport's part that the protocol uses; keeps what is written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def waiting_app(scope, receive, send):
    await receive()  # websocket.connect; the test accepts for it
    await asyncio.Event().wait()


async def opened(*, deflate: bool = False) -> tuple[WebSocketsSansIOProtocol, Transport]:
    config = Config(app=waiting_app, ws="websockets-sansio", ws_ping_interval=None)
    config.load()
    protocol = WebSocketsSansIOProtocol(config, ServerState(), {})
    transport = Transport()
    protocol.connection_made(transport)
    client = ClientProtocol(
        parse_uri("ws://127.0.0.1/ws/runs/"),
        extensions=[ClientPerMessageDeflateFactory()] if deflate else None,
    )
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()))
    await protocol.send({"type": "websocket.accept"})
    transport.written.clear()  # the handshake's answer
    return protocol, transport


async def test_the_direct_bytes_are_what_the_servers_send_writes():
    protocol, transport = await opened()
    frame = '<tbody><tr id="run-1" data-status="succeeded"></tr></tbody>' * 20

    await protocol.send({"type": "websocket.send", "text": frame})
    assert direct_writer(protocol.send)(encoded(frame)) is True

    assert len(transport.written) == 2
    assert transport.written[0] == transport.written[1]
    protocol.connection_lost(None)


async def test_a_socket_with_deflate_negotiated_is_left_to_the_server():
    # Not the server Signalbox starts (orchestrator/servers.py declines deflate), but a
    # server started with uvicorn's default.
    protocol, transport = await opened(deflate=True)
    assert protocol.conn.extensions

    assert direct_writer(protocol.send)(encoded("frame")) is False
    assert transport.written == []
    protocol.connection_lost(None)


async def test_a_socket_that_pushes_back_or_is_closing_is_left_to_the_server():
    protocol, transport = await opened()
    write = direct_writer(protocol.send)

    protocol.pause_writing()
    assert write(encoded("frame")) is False
    protocol.resume_writing()
    assert write(encoded("frame")) is True
    assert transport.written == [encoded("frame")]

    await protocol.send({"type": "websocket.close", "code": 1000})
    assert write(encoded("frame")) is False
    assert transport.written[1:] != [encoded("frame")]  # only the close frame
    protocol.connection_lost(None)


def test_a_send_that_is_not_uvicorns_gets_no_direct_writer():
    async def send(message):
        pass

    assert direct_writer(send) is None
