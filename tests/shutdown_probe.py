"""A process that makes spans and then ends, for the bounded-shutdown tests (test_shutdown).

``python tests/shutdown_probe.py SPANS exit|sigterm|os_exit``: ``configure()`` from the
environment the test sets (exporter, endpoint, ``OTEL_EDA_SHUTDOWN_TIMEOUT``), ``SPANS``
spans started and ended as fast as possible, then:

* ``exit``: prints ``EXITING <time.time()>`` and leaves through ``sys.exit`` (atexit);
* ``sigterm``: prints ``READY`` and sleeps until the test's SIGTERM ends it.

otel-eda's log lines go to stderr.
"""

from __future__ import annotations

import logging
import sys
import time


def main() -> int:
    spans, mode = int(sys.argv[1]), sys.argv[2]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("otel_eda").setLevel(logging.INFO)
    from opentelemetry import trace

    import otel_eda

    otel_eda.configure()
    tracer = trace.get_tracer("shutdown-probe")
    for i in range(spans):
        tracer.start_span("work", attributes={"i": i}).end()
    if mode == "exit":
        print(f"EXITING {time.time()}", flush=True)
        return 0
    print("READY", flush=True)
    time.sleep(120)
    return 3


if __name__ == "__main__":
    sys.exit(main())
