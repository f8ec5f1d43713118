"""OpenTelemetry SDK plug-ins, loaded by ``configure()`` or by the SDK's entry points.

* :mod:`~otel_eda.sdk.processor`: :class:`EventSpanProcessor`, stamps the flow's ids on every span;
* :mod:`~otel_eda.sdk.sampling`: :class:`LinkAwareSampler`, samples a linked consumer span with its producer;
* :mod:`~otel_eda.sdk.exportloss`: counts every span lost between ``span.end()`` and the backend;
* :mod:`~otel_eda.sdk.zipkin`: the ``zipkin_eda`` span exporter.
"""
