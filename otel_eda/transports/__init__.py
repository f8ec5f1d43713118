"""Transports built on :mod:`otel_eda.messaging`: each moves events, the messaging API
writes their telemetry.

* :mod:`~otel_eda.transports.bus`: the embedded in-process asyncio bus (the default);
* :mod:`~otel_eda.transports.interprocess`: the bus across processes on ``multiprocessing`` queues;
* :mod:`~otel_eda.transports.service`: a named service with handlers on a bus.
"""
