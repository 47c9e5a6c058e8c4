"""Adapters to the outside: Redis, outbound HTTP and its circuit breakers, crypto, counters."""
