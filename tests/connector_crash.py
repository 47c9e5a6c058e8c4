"""A connector process that dies between commit and ack: it reads one message, stores its
event (committed), then kills itself with SIGKILL before acknowledging. Run by the contract
suite as `python -m tests.connector_crash '<config as JSON>'` against the test database."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import django


def main() -> None:
    django.setup()
    from workflows.events.connectors import registry
    from workflows.events.connectors.base import ConnectionConfig
    from workflows.events.connectors.intake import ingest_batch

    config = ConnectionConfig(**json.loads(sys.argv[1]))
    connector = registry.get(config.kind)(config)
    connector.connect()
    print("connected", flush=True)
    deadline = time.monotonic() + 30
    messages = []
    while not messages and time.monotonic() < deadline:
        messages = connector.receive(timeout=0.5, max_messages=1)
    if not messages:
        sys.exit("no message arrived")
    outcomes = ingest_batch(
        messages, kind=config.kind, connection=config.name, default_type=config.default_type
    )
    print(f"committed {outcomes}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the crash: committed, never acknowledged


if __name__ == "__main__":
    main()
