"""`publish`: send a CloudEvent out of Signalbox, to a broker or an HTTP endpoint.

`connection` names a broker Connection (AMQP, NATS, MQTT, Kafka; see docs/connectors.md)
and `target` where on it (exchange and routing key, subject, topic); `url` sends it to an
HTTP endpoint instead (HTTP binding), through the outbound address guard of `http_request`.
The step succeeds only once the other side has the message: a publisher confirm, a
PUBACK, a JetStream PubAck, a Kafka delivery report, a 2xx answer.

Checking the destination, sending and the failure codes are shared with `emit_event`'s
`to` list (sending.py). The event's id is the attempt's idempotency key, the same on every
attempt: a retried step sends the same CloudEvent again, which JetStream (`Nats-Msg-Id`),
an HTTP receiver that honours `Idempotency-Key`, and any consumer that dedupes on (source,
id) see once.
Failures carry a code (`amqp.unreachable`, `kafka.unreachable`, `http.503`, …): an
unreachable broker, a nack and 5xx/429 are retryable; a refused target is not.
"""

from __future__ import annotations

from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.emit_event import event_attributes
from workflows.steps.registry import register
from workflows.steps.sending import (
    DESTINATION_PROPERTIES,
    EVENT_PROPERTIES,
    ONE_DESTINATION,
    secret_destination_problems,
    send_event,
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
            **DESTINATION_PROPERTIES,
            **EVENT_PROPERTIES,
            "partitionkey": {
                **EVENT_PROPERTIES["partitionkey"],
                "description": "the message key (Kafka key, default AMQP routing key)",
            },
        },
        "oneOf": ONE_DESTINATION,
    }
    # HTTP headers leave with the request and are never stored (as in http_request).
    secret_fields = ("/headers/*",)

    def secret_destination_problems(self, config):
        return secret_destination_problems(self, config)  # a fixed host

    def execute(self, config, ctx: StepContext):
        if ctx.outgoing_event is None:
            raise StepError("publish needs the services, which this context does not provide")
        from workflows.events.envelope import InvalidEvent

        config = event_attributes(config, "publish")
        try:
            envelope = ctx.outgoing_event(config)
        except InvalidEvent as exc:
            raise StepError(f"publish: invalid event: {exc}", code="invalid_event") from exc
        return {"ce_id": envelope.id, **send_event(config, envelope, ctx, kind="publish")}
