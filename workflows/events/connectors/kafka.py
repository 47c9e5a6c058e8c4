"""Apache Kafka source and sink (confluent-kafka, the librdkafka client).

Source: a consumer group reading `topics`, auto-commit off; offsets are committed (one
commit per batch, per partition the next offset) only after the events are stored, so a
crash between the commit and the offset commit makes the group read them again, and
dedupe on (source, id) stores nothing new.

Nothing the source does may block its thread for good. librdkafka (2.16) retries an offset
commit for as long as the group coordinator is unreachable, and `Consumer.close()` waits
for every outstanding commit: a synchronous commit, or a close after any commit, made just
as the broker went away blocked until it came back (tests/test_kafka_bus_source.py and the
contract suite's reconnect test reproduce it). So commits are asynchronous, their results
counted (`Commits`); one unanswered for COMMIT_SECONDS fails `receive`, and the reader
reconnects. A consumer with a commit still outstanding is not closed but destroyed without
the group goodbye (dropping the last reference runs librdkafka's destroy with
RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE, which does not wait); the group then moves its
partitions on after session.timeout.ms, and the uncommitted messages come again.

Sink: an idempotent producer (`enable.idempotence`, `acks=all`), one per connection kept by
the worker process (sink_clients.py): librdkafka's own retries are written once per
partition; the step succeeds on the delivery report. A retried *step* sends the message
again, so the broker may hold it twice: the CloudEvent id is the same, and a consumer that
dedupes on it (a Signalbox source does) sees one event.

CloudEvents Kafka binding 1.0.2: binary mode with the attributes in `ce_` headers and the
`content-type` header as `datacontenttype`; structured mode when the content type is
`application/cloudevents+json`. The message key is the partition key both ways (a sink
sends the event's `partitionkey` as the key, so one key stays in one partition and keeps
its order); a keyless message read by the source is keyed by `<topic>/<partition>`, the
order Kafka itself keeps. `<topic>/<partition>/<offset>` is the id of an event that names
none.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from urllib.parse import urlsplit

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from workflows.events.connectors.base import Connector, InvalidConnection, Message, consumes
from workflows.events.connectors.registry import register, register_sink
from workflows.events.connectors.sink import Outgoing, Sink, SinkClient, SinkError, unreachable

log = logging.getLogger("signalbox.connectors")
CLOSE_SECONDS = 5.0  # a graceful close (leaving the group) waited for at most this long
SETTLE_SECONDS = 3.0  # at close, how long outstanding commits may take to be answered
COMMIT_SECONDS = 15.0  # a commit unanswered this long means the coordinator is gone
METADATA_SECONDS = 5.0  # connect's first metadata request
# How long the group waits for a member that stopped heartbeating (a crashed reader) before
# its partitions move on. A broker also holds each join for a while to gather the members
# (Tansu: half the session): a shorter session joins and fails over faster.
SESSION_SECONDS = 10


def client_settings(config, *, timeout: float) -> dict:
    """librdkafka settings shared by the consumer and the producer: the bootstrap servers
    from `kafka://host:port[,host:port]` (`kafkas://` for TLS), SASL PLAIN when a username
    is set."""
    address = urlsplit(config.url)
    settings = {
        "bootstrap.servers": address.netloc.rsplit("@", 1)[-1],
        "client.id": f"signalbox-{config.name}",
        "socket.timeout.ms": int(timeout * 1000),
        # librdkafka's own log (stderr), errors only. Not a Python `logger`: its callback
        # takes the GIL from librdkafka's threads, and with several Python threads (the bus
        # consumer's) a connector stalled for good without a word.
        "log_level": 3,
    }
    tls = address.scheme == "kafkas"
    if config.username:
        settings |= {
            "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": config.username,
            "sasl.password": config.password,
        }
    elif tls:
        settings["security.protocol"] = "SSL"
    return settings


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


@register
class KafkaConnector(Connector):
    kind = "kafka"
    scheme = "kafka"
    option_names = ("topics", "group", "start", "session_timeout_seconds")
    required_options = ("topics",)

    @classmethod
    def check_options(cls, options):
        options = super().check_options(options)
        if not consumes(options):
            return options
        topics = options.get("topics", [])
        if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
            raise InvalidConnection("topics is a list of topic names (^regex allowed)")
        if options.get("start", "earliest") not in ("earliest", "latest"):
            raise InvalidConnection(
                "start is earliest or latest (where a new group begins reading)"
            )
        if not isinstance(options.get("group", ""), str):
            raise InvalidConnection("group is a consumer group id")
        session = options.get("session_timeout_seconds", SESSION_SECONDS)
        # At least three heartbeats (one a second) fit in a session.
        if (
            isinstance(session, bool)
            or not isinstance(session, int | float)
            or not 3 <= session <= 3600
        ):
            raise InvalidConnection("session_timeout_seconds is a number from 3 to 3600")
        return options

    def connect(self) -> None:
        options = self.config.options
        self.outcomes = Commits()
        settings = client_settings(self.config, timeout=10) | {
            "group.id": options.get("group") or f"signalbox-{self.config.name}",
            "enable.auto.commit": False,  # committed by `ack`, after the events are stored
            "enable.auto.offset.store": False,
            "auto.offset.reset": options.get("start", "earliest"),
            "session.timeout.ms": int(
                1000 * options.get("session_timeout_seconds", SESSION_SECONDS)
            ),
            "heartbeat.interval.ms": 1_000,
            # A subscribed topic that does not exist yet (made after the reader connected,
            # or again by a broker that lost it) is looked for every 10 s, not every 5 min.
            "topic.metadata.refresh.interval.ms": 10_000,
            # Bound methods of an object that does not hold the consumer: no reference
            # cycle, so `close` can drop the consumer's last reference (see `_abandon`).
            "error_cb": self.outcomes.on_error,
            "on_commit": self.outcomes.on_commit,
        }
        self.consumer = Consumer(settings)
        self.consumer.subscribe(options["topics"])
        # librdkafka connects lazily: ask for the metadata once, so a broker that does not
        # answer fails `connect` (and the connection's health says so) rather than go quiet.
        try:
            self.consumer.list_topics(timeout=METADATA_SECONDS)
        except KafkaException as exc:
            self.close()
            raise ConnectionError(f"Kafka: {exc}") from exc

    def receive(self, *, timeout: float, max_messages: int) -> list[Message]:
        self.outcomes.check()
        out = []
        # consume() also serves librdkafka's callbacks: errors and commit results.
        for msg in self.consumer.consume(num_messages=max_messages, timeout=timeout):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise ConnectionError(f"Kafka: {error.str()}")
            headers = {}
            for name, value in msg.headers() or []:
                headers[name.lower()] = _text(value)
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            key = _text(msg.key()) or f"{topic}/{partition}"
            out.append(
                Message(
                    body=msg.value() or b"",
                    content_type=headers.get("content-type", ""),
                    attributes={k[3:]: v for k, v in headers.items() if k.startswith("ce_")},
                    key=key,
                    fallback_id=f"{topic}/{partition}/{offset}",
                    token=(topic, partition, offset),
                )
            )
        return out

    def ack(self, messages: list[Message]) -> None:
        if not messages:
            return
        following: dict[tuple[str, int], int] = {}
        for message in messages:
            topic, partition, offset = message.token
            following[(topic, partition)] = max(following.get((topic, partition), 0), offset + 1)
        # Asynchronous: a synchronous commit blocks for as long as the coordinator is away.
        self.outcomes.sent()
        self.consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in following.items()],
            asynchronous=True,
        )

    def close(self) -> None:
        consumer, self.consumer = getattr(self, "consumer", None), None
        if consumer is None:
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        try:
            # Wait (a little) for the commits in flight to be answered: consume() is what
            # serves their callbacks. Messages read meanwhile are dropped, never committed:
            # the group hands them out again.
            while self.outcomes.pending() and time.monotonic() < deadline:
                consumer.consume(num_messages=100, timeout=0.2)
        except (KafkaException, RuntimeError):
            log.debug("Kafka consumer %s: settling commits failed", self.config.name)
        if self.outcomes.pending():
            log.warning(
                "Kafka consumer %s: %d offset commit(s) unanswered; dropped without leaving "
                "the group (its messages come again)",
                self.config.name,
                self.outcomes.pending(),
            )
            return  # `consumer` was the last reference: destroyed here, see the docstring
        # Leaving the group at once lets the partitions move on without waiting. With no
        # commit outstanding librdkafka does not wait for the broker; still, close on a
        # thread of its own (confluent-kafka-python #1667), waited for a while only.
        closing = threading.Thread(target=consumer.close, name="kafka-close", daemon=True)
        del consumer
        closing.start()
        closing.join(CLOSE_SECONDS)
        if closing.is_alive():
            log.warning("Kafka consumer %s: close still blocked; left behind", self.config.name)


class Commits:
    """What librdkafka reports back to a consumer, from its callbacks (served by consume()
    and close() on the reader's thread): fatal errors, and the asynchronous offset commits
    still unanswered."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: list[float] = []  # when each unanswered commit was sent, in order
        self.failure = ""

    def sent(self) -> None:
        with self._lock:
            self._waiting.append(time.monotonic())

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting)

    def on_commit(self, error, partitions) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.pop(0)  # answered in the order sent (one coordinator)
        failed = [p for p in partitions or [] if p.error is not None]
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self.failure = f"Kafka: offset commit failed: {error.str()}"
        elif failed:
            self.failure = f"Kafka: offset commit failed: {failed[0].error.str()}"

    def on_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() in (
            KafkaError._ALL_BROKERS_DOWN,
            KafkaError._AUTHENTICATION,
        ):
            self.failure = f"Kafka: {error.str()}"

    def check(self) -> None:
        """Raise what makes the reader reconnect: a fatal error, a failed commit (its
        messages come again, and dedupe stores nothing twice), or a commit unanswered
        for COMMIT_SECONDS."""
        if self.failure:
            raise ConnectionError(self.failure)
        with self._lock:
            oldest = self._waiting[0] if self._waiting else None
        if oldest is not None and time.monotonic() - oldest > COMMIT_SECONDS:
            raise ConnectionError(
                f"Kafka: an offset commit unanswered for {COMMIT_SECONDS:g} s "
                "(group coordinator unreachable)"
            )


# Delivery errors that mean the broker was not reached in time (or the producer was let go).
GONE = (
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    # Purged by another thread's failure, which dropped the shared producer: try again.
    KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT,
)


@register_sink
class KafkaSink(Sink):
    """An idempotent producer kept per connection; see the module's docstring."""

    kind = "kafka"
    target_names = ("topic", "key")
    required_target = ("topic",)

    def client_key(self, *, timeout: float) -> tuple:
        # The delivery timeout (message.timeout.ms) is the producer's, not the message's.
        return (*super().client_key(timeout=timeout), timeout)

    def open(self, *, timeout: float) -> KafkaClient:
        try:
            return KafkaClient(self.config, timeout=timeout)
        except KafkaException as exc:
            raise unreachable("kafka", exc) from exc


class KafkaClient(SinkClient):
    """librdkafka's producer: thread-safe, reconnects to the brokers by itself, and sends
    what several threads produce together. Each publish waits for its own delivery report,
    serving the producer's callbacks (anyone's) while it waits."""

    shared = True

    def __init__(self, config, *, timeout: float):
        self.failures: list[str] = []  # the latest client-level errors, for messages
        self.producer = Producer(
            client_settings(config, timeout=timeout)
            | {
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": int(timeout * 1000),
                "error_cb": self._on_error,
            }
        )
        self.fatal = ""

    def _on_error(self, error: KafkaError) -> None:
        self.failures = [*self.failures[-4:], error.str()]
        if error.fatal():  # an idempotent producer that lost its sequence: start anew
            self.fatal = error.str()

    def usable(self) -> bool:
        return not self.fatal

    def send(self, message: Outgoing, target, *, timeout: float) -> dict:
        topic = str(target["topic"])
        key = str(target.get("key") or message.key) or None
        headers = [(f"ce_{name}", value.encode()) for name, value in message.attributes.items()]
        if message.content_type:
            headers.append(("content-type", message.content_type.encode()))
        delivered: dict = {}
        reported = threading.Event()

        def on_delivery(error, msg):
            delivered["error"] = error
            if error is None:
                delivered["partition"], delivered["offset"] = msg.partition(), msg.offset()
            reported.set()

        try:
            self.producer.produce(
                topic, value=message.body, key=key, headers=headers, on_delivery=on_delivery
            )
            deadline = time.monotonic() + timeout + 1  # past message.timeout.ms: a report comes
            while not reported.is_set() and time.monotonic() < deadline:
                self.producer.poll(min(0.1, max(deadline - time.monotonic(), 0)))
        except (KafkaException, BufferError) as exc:
            raise unreachable("kafka", exc) from exc
        why = f" ({self.failures[-1]})" if self.failures else ""
        if not reported.is_set():
            raise SinkError(
                f"kafka: no delivery report within {timeout:g}s{why}",
                code="kafka.unreachable",
                retryable=True,
            )
        error = delivered["error"]
        if error is not None and error.code() in GONE:
            raise SinkError(
                f"kafka: could not publish: {error.str()}{why}",
                code="kafka.unreachable",
                retryable=True,
            )
        if error is not None:
            raise SinkError(
                f"kafka: the message was not written: {error.str()}",
                code=f"kafka.{error.name().lower().lstrip('_')}",
                retryable=error.retriable()
                or error.fatal()
                or error.code() == KafkaError._MSG_TIMED_OUT,
            )
        return {"topic": topic, "partition": delivered["partition"], "offset": delivered["offset"]}

    def close(self) -> None:
        # What is still queued is not sent later behind the step's back: the step has
        # failed (or is over) and its retry sends the event again.
        with contextlib.suppress(Exception):  # a producer in a fatal state may refuse it
            self.producer.purge(in_queue=True, in_flight=True)
        # close() flushes what is in flight; with the broker gone that waits, so on a
        # thread of its own, waited for a while only (as the consumer's close).
        closing = threading.Thread(target=self.producer.close, name="kafka-close", daemon=True)
        closing.start()
        closing.join(CLOSE_SECONDS)
