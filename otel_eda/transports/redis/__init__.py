"""otel-eda for Redis Streams (redis-py, sync and asyncio): event identity, lifecycle spans,
metrics, pending entries and lag, built on the public messaging API (:mod:`otel_eda.messaging`).

* :mod:`~otel_eda.transports.redis.instrumentor`: ``RedisStreamsInstrumentor`` (entry point
  ``otel_eda_redis``), ``processing(entry)``, ``outgoing_event`` and the dead-letter helper;
* :mod:`~otel_eda.transports.redis.telemetry`: what one instrumentation writes, and the
  reserved ``otel-eda:`` fields that carry the identity in a stream entry;
* :mod:`~otel_eda.transports.redis.lag`: the ``eda.consumer.lag`` and ``eda.consumer.pending`` gauges.

Importing this package imports no Redis client.
"""
