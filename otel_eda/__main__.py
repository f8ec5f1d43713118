"""``python -m otel_eda``: the ``otel-eda`` command (see :mod:`otel_eda.flows.cli`)."""

import sys

from otel_eda.flows.cli import main

if __name__ == "__main__":
    sys.exit(main())
