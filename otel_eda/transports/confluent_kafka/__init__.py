"""otel-eda for confluent-kafka (librdkafka's Python client): event identity, lifecycle spans,
metrics and consumer lag over Kafka, built on the public messaging API (:mod:`otel_eda.messaging`).

* :mod:`~otel_eda.transports.confluent_kafka.instrumentor`: ``ConfluentKafkaInstrumentor``
  (entry point ``otel_eda_confluent_kafka``) and ``processing(msg)``;
* :mod:`~otel_eda.transports.confluent_kafka.lag`: the ``eda.consumer.lag`` gauge;
* :mod:`~otel_eda.transports.confluent_kafka.contrib`: keeping the contrib confluent-kafka
  instrumentation out.

Importing this package imports no Kafka client (the distro reads ``contrib`` at start-up).
"""
