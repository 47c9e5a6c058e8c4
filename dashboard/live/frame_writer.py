"""One encoded WebSocket frame written to many sockets.

ASGI hands a server text, and the server encodes it, builds the WebSocket frame and joins
its parts for every socket: with 500 pages on one frame that is 500 times the same work.
Under uvicorn's websockets-sansio protocol (orchestrator/servers.py) a frame the Hub sends
to many pages is encoded once (`encoded`) and the same bytes are written to each socket's
transport (`direct_writer`), which is what the server's own send ends with.

Only where that is exactly what the server would have written: the connection is open, no
extension was negotiated (permessage-deflate compresses per connection, with the
connection's own context), no fragmented message is under way, the transport is not
closing and not pushing back. Otherwise, or under another server, the page is sent to
through ASGI as before.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.frames import Frame, Opcode
from websockets.protocol import State

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - another server: ASGI sends only
    WebSocketsSansIOProtocol = None


def encoded(text: str) -> bytes:
    """`text` as one unmasked, unfragmented WebSocket text frame, as a server sends it."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


def direct_writer(send) -> Callable[[bytes], bool] | None:
    """For the server's own `send` of one socket: a function that writes an encoded frame
    to its transport and says whether it could; None when the server is not one whose
    frames this module knows how to write."""
    protocol = getattr(send, "__self__", None)
    if WebSocketsSansIOProtocol is None or not isinstance(protocol, WebSocketsSansIOProtocol):
        return None
    if send != protocol.send:
        return None

    def write(data: bytes) -> bool:
        conn = protocol.conn
        transport = protocol.transport
        if (
            protocol.close_sent
            or protocol.disconnected
            or not protocol.writable.is_set()  # paused: the ASGI send waits for the drain
            or conn.state is not State.OPEN
            or conn.extensions
            or conn.expect_continuation_frame
            or conn.writes  # bytes of its own not yet handed over: keep the order
            or transport is None
            or transport.is_closing()
        ):
            return False
        transport.write(data)
        return True

    return write
