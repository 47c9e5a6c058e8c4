"""`publish`: send a CloudEvent out of Signalbox, to a broker or an HTTP endpoint.

`connection` names a broker Connection (AMQP, NATS, MQTT, Kafka; see docs/connectors.md)
and `target` where on it (exchange and routing key, subject, topic); `url` sends it to an
HTTP endpoint instead (HTTP binding), through the outbound address guard of `http_request`.
The step succeeds only once the other side has the message: a publisher confirm, a
PUBACK, a JetStream PubAck, a Kafka delivery report, a 2xx answer.

The event's id is the attempt's idempotency key, the same on every attempt: a retried step
sends the same CloudEvent again, which JetStream (`Nats-Msg-Id`), an HTTP receiver that
honours `Idempotency-Key`, and any consumer that dedupes on (source, id) see once.
Failures carry a code (`amqp.unreachable`, `kafka.unreachable`, `http.503`, …): an
unreachable broker, a nack and 5xx/429 are retryable; a refused target is not.
"""

from __future__ import annotations

import re

from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.emit_event import event_attributes
from workflows.steps.http_request import HttpRequest, _send, parse_retry_after
from workflows.steps.registry import register

# CloudEvents HTTP binding, binary mode: a header value is printable US-ASCII; space, `"`
# and `%` and everything else are percent-encoded as UTF-8 (spec 1.0.2, 3.1.3.2).
_KEEP = re.compile(r"[\x21\x23\x24\x26-\x7e]")


def header_value(text: str) -> str:
    return "".join(
        c if _KEEP.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in text
    )


@register
class Publish(StepKind):
    name = "publish"
    title = "Publish"
    description = (
        "Send a CloudEvent to a broker connection (AMQP, NATS, MQTT, Kafka) or an HTTP "
        "endpoint; waits for the broker's confirm."
    )
    icon = "radio"
    group = "actions"
    side_effects = True
    config_schema = {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "connection": {"type": "string", "minLength": 1, "maxLength": 100},
            "target": {
                "type": "object",
                "description": "where on the connection: amqp {exchange, routing_key, "
                "mandatory}, nats {subject, jetstream}, mqtt {topic, qos, retain}, "
                "kafka {topic, key}",
            },
            "url": {"type": "string", "pattern": "^https?://", "maxLength": 4096},
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "extra HTTP headers (url only)",
            },
            "mode": {"enum": ["binary", "structured"], "default": "binary"},
            "type": {"type": "string", "minLength": 1, "maxLength": 255},
            "subject": {"type": "string", "maxLength": 1024},
            "source": {
                "type": "string",
                "maxLength": 1024,
                "description": "default: /signalbox/runs/<run id>",
            },
            "data": {"description": "any JSON; {{ … }} inside strings"},
            "partitionkey": {
                "type": "string",
                "maxLength": 255,
                "description": "the message key (Kafka key, default AMQP routing key)",
            },
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
        },
        "oneOf": [
            {"required": ["connection", "target"], "not": {"required": ["url"]}},
            {
                "required": ["url"],
                "not": {"anyOf": [{"required": ["connection"]}, {"required": ["target"]}]},
            },
        ],
    }
    # HTTP headers leave with the request and are never stored (as in http_request).
    secret_fields = ("/headers/*",)

    def secret_destination_problems(self, config):
        if "url" not in config:
            return [("/headers", "headers are sent to a url only")]
        return HttpRequest.secret_destination_problems(self, config)  # a fixed host

    def execute(self, config, ctx: StepContext):
        if ctx.outgoing_event is None:
            raise StepError("publish needs the services, which this context does not provide")
        from workflows.events.connectors import registry
        from workflows.events.connectors.base import InvalidConnection
        from workflows.events.connectors.sink import SinkError, encode
        from workflows.events.envelope import InvalidEvent

        config = event_attributes(config, "publish")
        try:
            envelope = ctx.outgoing_event(config)
        except InvalidEvent as exc:
            raise StepError(f"publish: invalid event: {exc}", code="invalid_event") from exc
        mode = config.get("mode", "binary")
        message = encode(envelope, mode=mode)
        if "url" in config:
            return {"ce_id": envelope.id, **_post(config, message, ctx)}

        name = str(config["connection"])
        try:
            connection = ctx.connection(name)
            sink_class = registry.all_sinks().get(connection.kind)
            if sink_class is None:
                raise InvalidConnection(f"a {connection.kind} connection cannot be published to")
            target = sink_class.check_target(dict(config["target"]), mode=mode)
        except InvalidConnection as exc:
            raise StepError(f"publish: {exc}", code="invalid_target") from exc
        timeout = float(config.get("timeout_seconds", 10))
        try:
            receipt = sink_class(connection).publish(message, target, timeout=timeout)
        except SinkError as exc:
            raise StepError(str(exc), retryable=exc.retryable, code=exc.code) from exc
        return {"ce_id": envelope.id, "connection": name, "kind": connection.kind, **receipt}


def _post(config, message, ctx: StepContext) -> dict:
    """The HTTP binding: POST the event, binary (ce-* headers) or structured."""
    url = config["url"]
    # Ours win over configured ones, in any letter case: two would reach the receiver.
    ours = {"content-type", "idempotency-key"}
    headers = {
        k: "" if v is None else str(v)
        for k, v in config.get("headers", {}).items()
        if k.lower() not in ours and not k.lower().startswith("ce-")
    }
    for name, value in message.attributes.items():
        headers[f"ce-{name}"] = header_value(value)
    if message.content_type:
        headers["Content-Type"] = message.content_type
    headers["Idempotency-Key"] = ctx.idempotency_key
    timeout = float(config.get("timeout_seconds", 30))
    status, response_headers, _body = _send(
        "POST", url, {"headers": headers, "content": message.body}, ctx, timeout
    )
    if status >= 500 or status == 429:
        raise StepError(
            f"POST {url} answered {status}",
            retryable=True,
            retry_after=parse_retry_after(response_headers.get("retry-after")),
            code=f"http.{status}",
        )
    if status >= 300:
        raise StepError(f"POST {url} answered {status}", code=f"http.{status}")
    return {"url": url, "status": status}
