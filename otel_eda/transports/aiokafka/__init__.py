"""otel-eda for aiokafka: event identity, lifecycle spans, metrics and consumer lag over Kafka,
built on the public messaging API (:mod:`otel_eda.messaging`).

* :mod:`~otel_eda.transports.aiokafka.instrumentor`: ``AIOKafkaInstrumentor`` (entry point
  ``otel_eda_aiokafka``) and ``processing(record)``;
* :mod:`~otel_eda.transports.aiokafka.lag`: the ``eda.consumer.lag`` gauge;
* :mod:`~otel_eda.transports.aiokafka.contrib`: keeping the contrib aiokafka instrumentation out.

What the instrumentation writes is :mod:`otel_eda.transports.kafka_telemetry`, and how it
handles records :mod:`otel_eda.transports.kafka_records`, both shared with confluent-kafka.

Importing this package imports no Kafka client (the distro reads ``contrib`` at start-up).
"""
