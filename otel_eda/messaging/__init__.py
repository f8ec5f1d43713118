"""The transport integration API: publish and consume events with otel-eda's identity,
spans, metrics and lifecycle records, on any transport.

A transport makes one :class:`Messaging` per client and calls it at each step:

* **publish**: ``with messaging.publish(event_type, headers, setter=...) as pub: send(...)``
  derives the child event from the current one (or starts a root), starts the PRODUCER
  span ``send {destination}`` and injects identity, trace context, baggage and metadata
  into the transport's own header carrier (see :mod:`~otel_eda.messaging.carriers` for
  the getter/setter pair of each carrier shape: ``str`` or ``bytes`` values, Kafka's list
  of ``(str, bytes)``);
* **consume one message** (push: the transport calls the handler): ``with
  messaging.process(headers, destination=..., getter=...) as handling: handler(...)``
  extracts, starts the CONSUMER span ``process {destination}`` linked to the producer,
  runs the body with the event, span and baggage current, and settles it once: completed,
  failed, rejected (:class:`Rejected`), or what :meth:`Processing.settle` says (retried,
  dead-lettered);
* **pull** (the application's own loop): ``messaging.received(...)`` makes the CLIENT
  ``receive`` span of a fetch (one link per message, none for an empty fetch);
  :class:`PullTracker` follows an iterator (see :mod:`~otel_eda.messaging.pull`);
  ``messaging.process_batch(...)`` handles several messages in one CONSUMER span;
* **settle**: ``messaging.settle_span(...)`` for an explicit ack/nack/commit when
  ``OTEL_EDA_SETTLE_SPANS=true``;
* **in process** (a transport whose consumers live in the publisher's process, such as the
  embedded bus): when ``messaging.in_process()`` is true, ``publish(event_type, None)``
  writes no headers and ``pub.local()`` is the :class:`Incoming` every local consumer
  takes (a sole consumer as it is, several ``incoming.again()`` each), exactly what extracting
  the headers would give; with telemetry off, ``messaging.hand_off(event_type)`` makes that
  :class:`Incoming` without a span, and ``messaging.handed_over(incoming)`` follows the send.

Conventions followed (OpenTelemetry messaging semantic conventions v1.44): a single
message's process span is the child of its creation context in parent mode (the
default, ``OTEL_EDA_TRACE_MODE``) and always links to it; in link mode it starts a trace;
when a valid span is already current at process start (an HTTP server span), the process
span is that span's child and links to the creation context; ``receive`` is only the
CLIENT span of a pull; ``messaging.client.consumed.messages`` counts each delivery once.

Nothing here raises on hostile headers: invalid values are dropped and counted in
``eda.propagation.invalid``. ``otel_eda.testing.contract`` has the test suite every
transport passes.

>>> from otel_eda.messaging import Messaging, TEXT_SETTER
>>> from otel_eda.identity import current_event
>>> bus = Messaging("doc", service="shop")
>>> headers: dict[str, str] = {}
>>> with bus.publish("order_placed", headers, setter=TEXT_SETTER, business_key="order-1") as sent:
...     pass  # the transport sends (headers, payload) here
>>> with bus.process(headers, destination="order_placed") as handling:
...     current_event().event_id == sent.event.event_id
True
>>> handling.outcome
<Outcome.COMPLETED: 'completed'>
"""

from otel_eda.messaging.carriers import (
    BYTES_SETTER,
    HEADER_LIST_GETTER,
    HEADER_LIST_SETTER,
    TEXT_GETTER,
    TEXT_SETTER,
)
from otel_eda.messaging.core import (
    BatchProcessing,
    Incoming,
    Messaging,
    Outcome,
    Processing,
    Publication,
    Rejected,
    current_processing,
    error_message,
    error_type,
    service_name,
)
from otel_eda.messaging.headers import Binding
from otel_eda.messaging.pull import PullTracker
from otel_eda.settings import TraceMode

__all__ = [
    "BYTES_SETTER",
    "HEADER_LIST_GETTER",
    "HEADER_LIST_SETTER",
    "TEXT_GETTER",
    "TEXT_SETTER",
    "BatchProcessing",
    "Binding",
    "Incoming",
    "Messaging",
    "Outcome",
    "Processing",
    "Publication",
    "PullTracker",
    "Rejected",
    "TraceMode",
    "current_processing",
    "error_message",
    "error_type",
    "service_name",
]
