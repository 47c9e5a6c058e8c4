"""bench.push's events: the paced probes it times, and the load sent beside them."""

from __future__ import annotations

import threading
import time

import httpx

PROBE_TYPE = "com.example.push.probe"
LOAD_TYPE = "com.example.push.load"  # starts a run of bench-load
NOISE_TYPE = "com.example.push.noise"  # starts nothing: ingest and hints only


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
