"""otel-eda for aiokafka: event identity, lifecycle spans, metrics and consumer lag over Kafka.

* :mod:`~otel_eda.transports.aiokafka.lag`: the ``eda.consumer.lag`` gauge.
"""
