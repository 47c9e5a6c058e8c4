"""The outside world a workflow calls: a loopback HTTP server recording every request it
receives with its Idempotency-Key, the way a payment API would see them.

A request is recorded as soon as it arrives and answered a moment later, so a worker
killed in between has caused the effect without recording it: the case a retry must not
turn into a second effect (the receiver dedupes by key)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_AFTER_SECONDS = 0.05


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client killed mid-request (the point of the exercise) is not news


class Sink:
    def __init__(self, host: str = "127.0.0.1", answer_after: float = ANSWER_AFTER_SECONDS) -> None:
        # The fault scenarios need the gap between effect and answer to kill a worker in;
        # the soak, which measures, wants an answer in a few ms like a real API.
        self.answer_after = answer_after
        self.deliveries: Counter[str] = Counter()
        self.bodies: dict[str, bytes] = {}
        self.lock = threading.Lock()
        # Requests whose body holds a marker are answered only once it is released (a step
        # kept busy on purpose).
        self.held: dict[bytes, threading.Event] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key", "")
                with sink.lock:
                    sink.deliveries[key] += 1
                    sink.bodies[key] = body
                    gate = next((g for mark, g in sink.held.items() if mark in body), None)
                if gate is not None:
                    gate.wait(60)
                time.sleep(sink.answer_after)  # the effect happened; the answer is on its way
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = QuietServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/effect"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Sink:
        self.thread.start()
        return self

    def hold(self, marker: str) -> threading.Event:
        """Hold the answers to requests whose body contains `marker` until the returned
        event is set."""
        gate = threading.Event()
        with self.lock:
            self.held[marker.encode()] = gate
        return gate

    def snapshot(self) -> tuple[Counter[str], dict[str, bytes]]:
        """(deliveries by idempotency key, the last body received with each key)."""
        with self.lock:
            return Counter(self.deliveries), dict(self.bodies)

    def stop(self) -> None:
        for gate in self.held.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()
