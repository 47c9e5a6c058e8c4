"""Connector benchmark: events/s each broker source ingests, beside HTTP ingest in the same run.

    python -m bench.connectors            # its own throwaway stack; a few minutes
    python -m bench.connectors --quick    # fewer messages, shorter HTTP phase

Phases, loopback only, against the machine's RabbitMQ (:5672), NATS JetStream (:4222),
Mosquitto (:1883) and Kafka-protocol broker (Tansu on :9092, `python -m tests.kafka_server`):
  (a) HTTP: single structured CloudEvents POSTed by wrk (2 threads, 10 connections), as in
      bench/ingest.py; this is the rate each broker is compared with (goal: at least half).
  (b) per broker: the connection is added and connects once (so its queue, stream, session or
      consumer group exists), is disabled, `--messages` structured CloudEvents are published to
      it (64 keys), then it is enabled, and the rate is messages / (last event's received_at -
      first's): what the connector ingests with a backlog, not what the publisher manages.

Results go to stdout and var/bench/connectors-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # `python bench/connectors.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
import paho.mqtt.client as mqtt
import pika
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from bench.ingest_phases import wrk_phase
from bench.ingest_report import print_table
from bench.results import Result
from bench.stack import EVENT_TYPE, OUT, Stack

STRUCTURED = "application/cloudevents+json"
KAFKA_PORT = 9092


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def event(tag: str, n: int) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "type": EVENT_TYPE,
            "source": f"/bench/connector/{tag}",
            "id": f"{tag}-{n}",
            "data": {"order": n, "amount": 12.5, "currency": "EUR"},
        }
    ).encode()


class Amqp:
    kind = "amqp"

    def __init__(self, tag: str):
        self.tag, self.queue = tag, f"bench-{tag}"

    def add_args(self) -> list[str]:
        options = {"queue": self.queue, "exchange": "amq.topic", "binding_keys": [f"b{self.tag}.#"]}
        return ["amqp", "amqp://127.0.0.1:5672/%2F", "--options", json.dumps(options)]

    def publish(self, count: int) -> None:
        conn = pika.BlockingConnection(pika.URLParameters("amqp://127.0.0.1:5672/%2F"))
        channel = conn.channel()
        channel.confirm_delivery()
        props = pika.BasicProperties(content_type=STRUCTURED, delivery_mode=2)
        for n in range(count):
            channel.basic_publish("amq.topic", f"b{self.tag}.k{n % 64}", event(self.tag, n), props)
        conn.close()

    def cleanup(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters("amqp://127.0.0.1:5672/%2F"))
        conn.channel().queue_delete(self.queue)
        conn.close()


class Nats:
    kind = "nats"

    def __init__(self, tag: str):
        self.tag, self.stream = tag, f"BENCH_{tag}"

    def add_args(self) -> list[str]:
        options = {"stream": self.stream, "subjects": [f"b{self.tag}.>"]}
        return ["nats", "nats://127.0.0.1:4222", "--options", json.dumps(options)]

    def publish(self, count: int) -> None:
        async def run():
            nc = await nats.connect("nats://127.0.0.1:4222")
            js = nc.jetstream()
            headers = {"Content-Type": STRUCTURED}
            for start in range(0, count, 200):  # acks awaited 200 at a time
                futures = [
                    await js.publish_async(
                        f"b{self.tag}.k{n % 64}", event(self.tag, n), headers=headers
                    )
                    for n in range(start, min(count, start + 200))
                ]
                await asyncio.gather(*futures)
            await nc.close()

        asyncio.run(run())

    def cleanup(self) -> None:
        async def run():
            nc = await nats.connect("nats://127.0.0.1:4222")
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(self.stream)
            await nc.close()

        asyncio.run(run())


class Mqtt:
    kind = "mqtt"

    def __init__(self, tag: str):
        self.tag, self.client_id = tag, f"bench-{tag}"

    def add_args(self) -> list[str]:
        options = {"topics": [f"b{self.tag}/#"], "client_id": self.client_id}
        return ["mqtt", "mqtt://127.0.0.1:1883", "--options", json.dumps(options)]

    def publish(self, count: int) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        infos = [
            client.publish(f"b{self.tag}/k{n % 64}", event(self.tag, n), qos=1)
            for n in range(count)
        ]
        for info in infos:
            info.wait_for_publish(timeout=60)
        client.disconnect()
        client.loop_stop()

    def cleanup(self) -> None:
        # A clean start with the connector's client id ends its persistent session.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        client.connect("127.0.0.1", 1883, clean_start=True)
        client.disconnect()


class Kafka:
    kind = "kafka"
    partitions = 3  # as the contract suite's topics; the 64 keys spread over them

    def __init__(self, tag: str):
        self.tag, self.topic, self.group = tag, f"bench-{tag}", f"bench-{tag}"
        self.bootstrap = {"bootstrap.servers": f"127.0.0.1:{KAFKA_PORT}"}
        # Made before the connection: a topic subscribed before it exists is only looked
        # for again every 10 s (the connector's metadata refresh).
        admin = AdminClient(self.bootstrap)  # kept until answered: its futures die with it
        [created] = admin.create_topics([NewTopic(self.topic, self.partitions)]).values()
        created.result(timeout=20)

    def add_args(self) -> list[str]:
        options = {"topics": [self.topic], "group": self.group}
        return ["kafka", f"kafka://127.0.0.1:{KAFKA_PORT}", "--options", json.dumps(options)]

    def publish(self, count: int) -> None:
        producer = Producer(self.bootstrap | {"enable.idempotence": True, "linger.ms": 5})
        errors = []
        headers = [("content-type", STRUCTURED.encode())]
        for n in range(count):
            producer.produce(
                self.topic,
                value=event(self.tag, n),
                key=f"k{n % 64}",
                headers=headers,
                on_delivery=lambda e, _m: e is not None and errors.append(e),
            )
            producer.poll(0)
        if producer.flush(60) or errors:
            raise RuntimeError(f"Kafka did not take every message: {errors[:3]}")

    def cleanup(self) -> None:
        admin = AdminClient(self.bootstrap)
        for futures in (
            admin.delete_topics([self.topic]),
            admin.delete_consumer_groups([self.group]),
        ):
            for future in futures.values():
                with contextlib.suppress(Exception):  # Tansu keeps it all in memory anyway
                    future.result(timeout=10)


def wait_state(conn, name: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT state, last_error FROM workflows_connection WHERE name = %s", (name,)
        ).fetchone()
        if row and row[0] == state:
            return
        time.sleep(0.1)
    raise RuntimeError(f"connection {name} never became {state} (last: {row})")


def broker_phase(stack: Stack, broker, count: int, timeout: float) -> Result:
    name = f"bench-{broker.kind}-{broker.tag}"
    source = f"/bench/connector/{broker.tag}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        stack.manage("connectors", "add", name, *broker.add_args())
        wait_state(conn, name, "connected")
        stack.manage("connectors", "disable", name)
        wait_state(conn, name, "idle")
        print(f"  publishing {count} messages to {broker.kind} ...", flush=True)
        broker.publish(count)
        stack.manage("connectors", "enable", name)
        deadline = time.monotonic() + timeout
        stored = 0
        while time.monotonic() < deadline and stored < count:
            stored = conn.execute(
                "SELECT count(*) FROM workflows_event WHERE source = %s", (source,)
            ).fetchone()[0]
            time.sleep(0.2)
        first, last = conn.execute(
            "SELECT extract(epoch from min(received_at)), extract(epoch from max(received_at)) "
            "FROM workflows_event WHERE source = %s",
            (source,),
        ).fetchone()
        stack.manage("connectors", "remove", name)
    seconds = float(last - first) if first is not None else 0.0
    note = "" if stored >= count else f"only {stored} of {count} in {timeout:.0f}s"
    name = f"{broker.kind} source, backlog of {count}"
    return Result(name, stored, count, seconds, [], count - stored, note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server for the throwaway stack")
    parser.add_argument("--seconds", type=float, default=8.0, help="the HTTP phase")
    parser.add_argument("--messages", type=int, default=1000, help="messages per broker")
    kinds = {"amqp": Amqp, "nats": Nats, "mqtt": Mqtt, "kafka": Kafka}
    parser.add_argument("--only", nargs="*", choices=list(kinds), default=list(kinds))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.messages = 3.0, 300
    if not shutil.which("wrk"):
        parser.error("wrk is needed for the HTTP phase (apt-get install wrk)")
    if "kafka" in args.only and not answers(KAFKA_PORT):
        parser.error(f"no Kafka broker on 127.0.0.1:{KAFKA_PORT} (python -m tests.kafka_server)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tag = uuid.uuid4().hex[:8]
    print("starting a throwaway stack (database, redis-server, web, worker, bus, scheduler)")
    stack = Stack(tag, args.database_url)
    rows: list[tuple[Result, Result | None]] = []
    try:
        stack.start()
        url = f"{stack.base_url}/api/v1/events"
        wrk_phase("warm-up", url, token=stack.token, seconds=2)
        print("HTTP ingest, single events ...", flush=True)
        http = wrk_phase(
            "HTTP ingest, single structured event", url, token=stack.token, seconds=args.seconds
        )
        rows.append((http, None))
        for kind in args.only:
            broker = kinds[kind](uuid.uuid4().hex[:8])
            print(f"{kind} source ...", flush=True)
            try:
                rows.append((broker_phase(stack, broker, args.messages, timeout=180), http))
            finally:
                broker.cleanup()
    finally:
        stack.stop()
    print_table(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    report = OUT / f"connectors-{datetime.now():%Y%m%d-%H%M%S}.json"
    report.write_text(
        json.dumps(
            {
                "options": vars(args),
                "results": [{**r.summary(), "vs": b.name if b else None} for r, b in rows],
            },
            indent=2,
        )
    )
    print(f"written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
