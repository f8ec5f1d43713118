"""otel-eda for pika (RabbitMQ, ``BlockingConnection`` and ``SelectConnection``): event identity,
lifecycle spans, metrics, redeliveries and dead-letter exchanges, built on the public messaging
API (:mod:`otel_eda.messaging`) and the RabbitMQ rules shared with aio-pika
(:mod:`otel_eda.transports.rabbitmq`).

* :mod:`~otel_eda.transports.pika.instrumentor`: ``PikaInstrumentor`` (entry point ``otel_eda_pika``);
* :mod:`~otel_eda.transports.pika.depth`: the queue depth and consumer count gauges (a thread of their own);
* :mod:`~otel_eda.transports.pika.contrib`: keeping the contrib pika instrumentation out.

Importing this package imports no AMQP client (the distro reads ``contrib`` at start-up).
"""
