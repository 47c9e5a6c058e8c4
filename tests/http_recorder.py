"""A loopback HTTP server standing in for the outside internet: it records every request
and answers from a script of responses."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: object = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)


def body_text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.echo = False  # answer with the request (its status still from the script)
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body_bytes = self.rfile.read(length) if length else b""
                with recorder.lock:
                    recorder.requests.append(
                        Recorded(self.command, self.path, dict(self.headers.items()), body_bytes)
                    )
                    reply = recorder.script.popleft() if recorder.script else recorder.default
                body = reply.body
                if recorder.echo:  # a server that answers with the request it received
                    body = {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": body_text(body_bytes),
                    }
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *replies: Reply) -> None:
        with self.lock:
            self.script.extend(replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
