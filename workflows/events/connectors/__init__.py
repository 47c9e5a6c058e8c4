"""Connectors: events in from the message brokers people already run.

One module per broker kind (`amqp`, `nats_jetstream`, `mqtt`) behind a small registry
(`registry`), all feeding the same ingest path as HTTP and the external Redis streams:
validation, dedupe on (source, id), storage, then the bus. See docs/connectors.md.
"""
