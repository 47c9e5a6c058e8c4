"""200 publishes per broker kind through the `publish` step's sinks, against the local
brokers: with a new client per publish (what the sinks did before: connect, publish,
close) and with the client a worker process keeps (sink_clients.py). Same run, same
machine, one after the other.

    .venv/bin/python -m bench.sink_reuse [COUNT]
"""

from __future__ import annotations

import sys
import time

from tests.connector_brokers import BROKERS
from workflows.events.connectors import registry, sink_clients
from workflows.events.connectors.base import ConnectionConfig
from workflows.events.connectors.sink import encode
from workflows.events.envelope import Envelope


def run(kind: str, count: int, *, reuse: bool) -> float:
    broker = BROKERS[kind]()
    try:
        if kind == "amqp":
            broker.listen()  # a bound queue: the publish is mandatory
        config = ConnectionConfig(
            name=f"bench-{broker.uid}", kind=kind, url=broker.url(), options={"consume": False}
        )
        sink = registry.get_sink(kind)(config)
        target = sink.check_target(broker.sink_target("bench"), mode="binary")
        started = time.perf_counter()
        for n in range(count):
            envelope = Envelope(
                id=f"sb-bench-{n}",
                source="/bench",
                type="com.example.bench",
                datacontenttype="application/json",
                data={"n": n},
            )
            sink.publish(encode(envelope, mode="binary"), target, timeout=10)
            if not reuse:
                sink_clients.close_all()
        took = time.perf_counter() - started
        sink_clients.close_all()
        return took
    finally:
        broker.cleanup()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(f"{count} publishes, confirmed one by one")
    print(f"{'kind':6} {'new client each':>16} {'kept client':>12} {'gain':>6}")
    for kind in sorted(BROKERS):
        fresh = run(kind, count, reuse=False)
        kept = run(kind, count, reuse=True)
        print(
            f"{kind:6} {fresh * 1000 / count:13.2f} ms {kept * 1000 / count:9.2f} ms "
            f"{fresh / kept:5.1f}x"
        )


if __name__ == "__main__":
    import django

    django.setup()
    main()
