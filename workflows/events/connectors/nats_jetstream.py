"""NATS JetStream source (nats-py): a durable pull consumer on a stream, each message
acknowledged only after its event is committed (unacknowledged ones come back after
`ack_wait_seconds`).

CloudEvents NATS binding: binary mode with the attributes in `ce-` headers and the
`Content-Type` header as `datacontenttype`; structured mode when the content type is
`application/cloudevents+json` or the body is a CloudEvent. The subject is the partition
key; `<stream>/<stream sequence>` is the id of an event that names none, so a redelivery
is recognised.

nats-py is asyncio-only: the connector owns an event loop and runs it only while it waits
on the server, so the database work in between runs as ordinary synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats
from nats.js import api
from nats.js.errors import NoStreamResponseError, NotFoundError

from workflows.events.connectors.base import Connector, InvalidConnection, Message
from workflows.events.connectors.registry import register, register_sink
from workflows.events.connectors.sink import Outgoing, Sink, SinkClient, SinkError, unreachable


async def connect(config, *, timeout: float):
    """A connection that does not reconnect by itself (the caller's back-off does). Bounded
    by `timeout` as a whole: nats-py keeps retrying a refused first connection."""
    auth = {}
    if config.username:
        auth = {"user": config.username, "password": config.password}

    async def quiet(_error):  # reported by the caller, once, not logged on every try
        pass

    return await asyncio.wait_for(
        nats.connect(
            config.url,
            allow_reconnect=False,
            connect_timeout=timeout,
            max_reconnect_attempts=0,
            error_cb=quiet,
            **auth,
        ),
        timeout,
    )


@register
class NatsJetStreamConnector(Connector):
    kind = "nats"
    scheme = "nats"
    option_names = ("stream", "subjects", "subject", "durable", "ack_wait_seconds")
    required_options = ("stream",)

    @classmethod
    def check_options(cls, options):
        options = super().check_options(options)
        subjects = options.get("subjects", [])
        if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
            raise InvalidConnection("subjects is a list of subjects (the stream's, if created)")
        wait = options.get("ack_wait_seconds", 30)
        if not isinstance(wait, (int, float)) or not 0.5 <= wait <= 3600:
            raise InvalidConnection("ack_wait_seconds is a number from 0.5 to 3600")
        return options

    def _run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def connect(self) -> None:
        options = self.config.options
        self.loop = asyncio.new_event_loop()
        self.stream = options["stream"]
        self.nc = self._run(connect(self.config, timeout=3))
        js = self.nc.jetstream()
        subjects = options.get("subjects", [])
        if subjects:  # create the stream when it does not exist yet
            try:
                self._run(js.stream_info(self.stream))
            except NotFoundError:
                self._run(js.add_stream(name=self.stream, subjects=subjects))
        durable = options.get("durable") or f"signalbox-{self.config.name}"
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=float(options.get("ack_wait_seconds", 30)),
            max_ack_pending=1000,
        )
        self.sub = self._run(
            js.pull_subscribe(
                options.get("subject", ""), durable=durable, stream=self.stream, config=config
            )
        )

    def receive(self, *, timeout: float, max_messages: int) -> list[Message]:
        if self.nc.is_closed:
            raise ConnectionError("the NATS connection closed")
        try:
            msgs = self._run(self.sub.fetch(batch=max_messages, timeout=timeout))
        except nats.errors.TimeoutError:
            return []
        out = []
        for msg in msgs:
            headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
            meta = msg.metadata
            out.append(
                Message(
                    body=msg.data,
                    content_type=headers.get("content-type", ""),
                    attributes={k[3:]: v for k, v in headers.items() if k.startswith("ce-")},
                    key=msg.subject,
                    fallback_id=f"{meta.stream}/{meta.sequence.stream}",
                    redelivered=meta.num_delivered > 1,
                    token=msg,
                )
            )
        return out

    def ack(self, messages: list[Message]) -> None:
        if not messages:
            return

        async def ack_all():
            for message in messages:
                await message.token.ack()
            await self.nc.flush(timeout=5)  # the acks have reached the server

        self._run(ack_all())

    def close(self) -> None:
        nc = getattr(self, "nc", None)
        try:
            if nc is not None and not nc.is_closed:
                self._run(nc.close())
        except Exception:  # noqa: BLE001 - already broken: unacked messages come back anyway
            pass
        finally:
            if getattr(self, "loop", None) is not None:
                self.loop.close()


@register_sink
class NatsSink(Sink):
    """Core NATS by default: the message goes to the subject's current subscribers, and the
    step succeeds once the server has it (a flush), which is at most once for a subscriber
    that is not listening. `"jetstream": true` publishes to the stream holding the subject
    and waits for its PubAck, with the CloudEvent id as `Nats-Msg-Id`, so the stream stores
    a retried step's message once within its duplicate window (2 minutes by default).
    Binary mode puts the attributes in `ce-` headers (NATS binding 1.0.1)."""

    kind = "nats"
    target_names = ("subject", "jetstream")
    required_target = ("subject",)

    @classmethod
    def check_target(cls, target, *, mode):
        target = super().check_target(target, mode=mode)
        if not isinstance(target.get("jetstream", False), bool):
            raise InvalidConnection("target.jetstream is true or false")
        return target

    def open(self, *, timeout: float) -> NatsClient:
        with nats_errors():
            return NatsClient(self.config, timeout=timeout)


@contextlib.contextmanager
def nats_errors(subject: str = ""):
    """nats-py's exceptions as the sink's coded failures."""
    try:
        yield
    except (NoStreamResponseError, nats.errors.NoRespondersError) as exc:
        raise SinkError(
            f"nats: no JetStream stream holds subject {subject!r}",
            code="nats.no_stream",
            retryable=False,
        ) from exc
    except nats.js.errors.APIError as exc:
        raise SinkError(
            f"nats: JetStream refused the message: {exc}",
            code=f"nats.jetstream.{exc.code or 'error'}",
            retryable=(exc.code or 500) >= 500,
        ) from exc
    except (nats.errors.BadSubjectError, nats.errors.MaxPayloadError) as exc:
        raise SinkError(
            f"nats: {type(exc).__name__}: {exc}", code="nats.refused", retryable=False
        ) from exc
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise unreachable("nats", exc) from exc


class NatsClient(SinkClient):
    """A connection and the event loop it lives on. nats-py is asyncio-only: the loop runs
    only while a publish waits on the server (one thread at a time); between publishes the
    server's pings go unanswered, and after two it closes the connection, which the next
    publish notices and replaces."""

    def __init__(self, config, *, timeout: float):
        self.loop = asyncio.new_event_loop()
        try:
            self.nc = self.loop.run_until_complete(connect(config, timeout=timeout))
        except BaseException:
            self.loop.close()
            raise

    def usable(self) -> bool:
        # One turn of the loop: the reader sees a socket the server closed meanwhile (else
        # the publish would find out only when its flush timed out).
        self.loop.run_until_complete(asyncio.sleep(0))
        return self.nc.is_connected

    def send(self, message: Outgoing, target, *, timeout: float) -> dict:
        subject = str(target["subject"])
        headers = {f"ce-{name}": value for name, value in message.attributes.items()}
        if message.content_type:
            headers["content-type"] = message.content_type
        jetstream = target.get("jetstream", False)
        nc = self.nc

        async def send() -> dict:
            if jetstream:
                headers["Nats-Msg-Id"] = message.id
                ack = await nc.jetstream().publish(
                    subject, message.body, timeout=timeout, headers=headers
                )
                return {"stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}
            await nc.publish(subject, message.body, headers=headers or None)
            await nc.flush(timeout=timeout)
            return {}

        with nats_errors(subject):
            receipt = self.loop.run_until_complete(asyncio.wait_for(send(), timeout + 1))
        return {"subject": subject, **receipt}

    def close(self) -> None:
        try:
            if not self.nc.is_closed:
                self.loop.run_until_complete(asyncio.wait_for(self.nc.close(), 5))
        except Exception:  # noqa: BLE001 - already broken: nothing to hand back
            pass
        finally:
            # nats-py's reader and pinger of a connection that closed on its own.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()
