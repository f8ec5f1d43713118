"""otel-eda for aio-pika: event identity, lifecycle spans, metrics, redeliveries and
dead-letter exchanges over RabbitMQ, built on the public messaging API (:mod:`otel_eda.messaging`).

* :mod:`~otel_eda.transports.aio_pika.instrumentor`: ``AioPikaInstrumentor`` (entry point
  ``otel_eda_aio_pika``), ``outgoing_event`` and the AMQP naming rules;
* :mod:`~otel_eda.transports.aio_pika.telemetry`: what one instrumentation writes;
* :mod:`~otel_eda.transports.aio_pika.depth`: the queue depth and consumer count gauges;
* :mod:`~otel_eda.transports.aio_pika.contrib`: keeping the contrib aio-pika instrumentation out.

Importing this package imports no AMQP client (the distro reads ``contrib`` at start-up).
"""
