"""Several worker "hosts" on one machine: each a Linux network namespace of its own, joined
to the machine by a veth pair, with workers inside sharing one PostgreSQL and one Redis.

The machine side gets one more address on its loopback interface (`services_address`, a
/32), on which the suite's PostgreSQL and Redis proxies and the side-effect sink listen; each
namespace routes to it over its own veth pair. Cutting a host is taking its veth link down:
its workers are cut off mid-work (connections hang: a partition, not a crash), as a machine
whose network fails. Every address is on this machine's own interfaces; nothing leaves it.

Needs root (CAP_NET_ADMIN) and iproute2; a missing one fails the run, never skips it.

    python -m tests.chaos.hosts [--seconds 20] [--rate 40]   # throughput, 1 host then 2

Each result carries the 1-minute load average before its load and after it settled: on a
shared machine the ratio between one and two hosts means little without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from tests.chaos.services import ServiceMissing

PREFIX = "10.213"


def ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def check_can_make_hosts() -> None:
    if shutil.which("ip") is None:
        raise ServiceMissing("iproute2 (`ip`) is needed for the worker-host tests")
    if os.geteuid() != 0:
        raise ServiceMissing("the worker-host tests make network namespaces: run them as root")


@dataclass
class Hosts:
    """`Hosts(2).create()` ... `destroy()`; `namespaces` names them, `cut(name)` isolates
    one."""

    count: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    _links: dict[str, str] = field(default_factory=dict)  # namespace -> machine-side veth
    subnet: int = 0
    _address_added: bool = False

    @property
    def services_address(self) -> str:
        return f"{PREFIX}.{self.subnet}.1"

    def create(self) -> Hosts:
        check_can_make_hosts()
        # One /24 per run, picked from the tag, so two runs side by side do not collide.
        self.subnet = int(self.tag, 16) % 200 + 20
        try:
            ip("addr", "add", f"{self.services_address}/32", "dev", "lo")
            self._address_added = True
            for n in range(1, self.count + 1):
                self._add_host(n)
        except Exception:
            self.destroy()
            raise
        return self

    def _add_host(self, n: int) -> None:
        namespace = f"sbx-{self.tag}-h{n}"
        outside, inside = f"sbx{self.tag}{n}a", f"sbx{self.tag}{n}b"
        machine, host = f"{PREFIX}.{self.subnet}.{4 * n + 1}", f"{PREFIX}.{self.subnet}.{4 * n + 2}"
        ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self._links[namespace] = outside
        ip("link", "set", inside, "netns", namespace)
        ip("addr", "add", f"{machine}/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("link", "set", "lo", "up", namespace=namespace)
        ip("addr", "add", f"{host}/30", "dev", inside, namespace=namespace)
        ip("link", "set", inside, "up", namespace=namespace)
        ip("route", "add", f"{self.services_address}/32", "via", machine, namespace=namespace)

    def cut(self, namespace: str) -> None:
        """Take the host's link down: its connections hang, nothing reaches it."""
        ip("link", "set", self._links[namespace], "down")

    def destroy(self) -> None:
        for namespace in self.namespaces:
            with contextlib.suppress(RuntimeError):
                ip("link", "del", self._links.get(namespace, ""))
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", namespace)
        self.namespaces.clear()
        if self._address_added:
            with contextlib.suppress(RuntimeError):
                ip("addr", "del", f"{self.services_address}/32", "dev", "lo")
            self._address_added = False


def throughput(hosts: int, seconds: float, rate: float) -> dict:
    """Runs finished per second under `rate` events/s with workers on `hosts` hosts."""
    from tests.chaos.harness import ChaosStack, Load, settle

    machine = Hosts(hosts).create()
    stack = ChaosStack(
        listen_host=machine.services_address,
        worker_hosts={f"worker-{ns}": ns for ns in machine.namespaces},
    )
    try:
        stack.start()
        # The machine may be shared: the load average beside the figure says how far.
        load_before = os.getloadavg()[0]
        load = Load(stack, rate).start()
        started = time.monotonic()
        time.sleep(seconds)  # the measured period (a benchmark, not a test)
        load.stop()
        sending = time.monotonic() - started
        outcome = settle(stack, load.accepted, timeout=60)
        elapsed = time.monotonic() - started
        per_host = dict(
            stack.query(
                "SELECT split_part(worker, '@', 1), count(*) FROM workflows_steprun"
                " WHERE status = 'succeeded' AND worker <> '' GROUP BY 1"
            )
        )
        return {
            "hosts": hosts,
            "accepted": outcome.accepted,
            "runs_succeeded": outcome.succeeded,
            # Accepted per second while sending: below `rate` when the one sending
            # thread waits on slow answers (a loaded machine).
            "accepted_per_second": round(outcome.accepted / sending, 1),
            # Until the last run finished: the figure compared between 1 and 2 hosts.
            "seconds_to_settle": round(elapsed, 1),
            "runs_per_second": round(outcome.succeeded / elapsed, 2),
            "load_average_1m": (round(load_before, 2), round(os.getloadavg()[0], 2)),
            "steps_by_host": per_host,
            "ok": outcome.ok,
        }
    finally:
        stack.stop()
        machine.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="throughput with 1 and 2 worker hosts")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=40)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()
    print(f"load average {os.getloadavg()}; {args.rate} events/s for {args.seconds} s")
    results = [throughput(n, args.seconds, args.rate) for n in (1, 2)]
    for result in results:
        print(result, flush=True)
    one, two = (r["runs_succeeded"] / r["seconds_to_settle"] for r in results)
    print(f"2 hosts / 1 host: {two / one:.2f}x" if one else "1 host finished nothing")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
