"""otel-eda for nats-py: event identity, lifecycle spans, metrics and pending counts over NATS
and JetStream, built on the public messaging API (:mod:`otel_eda.messaging`).

* :mod:`~otel_eda.transports.nats.instrumentor`: ``NATSInstrumentor`` (entry point
  ``otel_eda_nats``), ``processing(msg)`` and ``outgoing_event(...)``;
* :mod:`~otel_eda.transports.nats.telemetry`: what one instrumentation writes;
* :mod:`~otel_eda.transports.nats.lag`: the ``eda.consumer.lag`` and
  ``eda.consumer.ack_pending`` gauges of JetStream consumers.

Importing this package imports no NATS client.
"""
