"""otel-eda's own histograms, handed to the anomaly reader without a second SDK aggregation.

The default rules read ``messaging.process.duration`` and ``eda.event.age``, which otel-eda
records on every handled message. Through the SDK, the anomaly reader aggregates each such
measurement a second time beside the application's exporting reader: attributes copied
and hashed, an exponential histogram updated, an exemplar offered; about a tenth of
otel-eda's whole telemetry cost per event. Here the messaging API adds the value to a
small exponential histogram of its own per attribute set (a logarithm and a dict
increment) for each anomaly reader that subscribed on the same MeterProvider, and the
reader turns what accumulated into series points at its collection, exactly as it turns
the SDK's exponential histogram points (count rate, mean, p95, p99, exemplars, and the
error ratio of ``messaging.*`` metrics). The SDK then skips those two instruments of
otel-eda's scopes in the anomaly reader's storage (see
:mod:`otel_eda.anomaly.instrument_filter`); the exporting reader is unchanged.

Buckets: base ``2 ** (2 ** -SCALE)`` (scale 5: each bucket about 2.2 % wide), interpolated
within a bucket and clamped to the exact min and max, as the SDK's points are read.
Exemplars: the last :data:`EXEMPLARS_KEPT` span contexts per attribute set that the SDK's
exemplar filter (``OTEL_METRICS_EXEMPLAR_FILTER``, default ``trace_based``) would sample.

A subscription exists only where the reader knows its provider's measurement consumer
and narrows its storage; anywhere else the SDK aggregates as before.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context

from otel_eda import semconv
from otel_eda.process_hooks import ForkHook, register_fork_hook

# The OpenTelemetry API only at import: the messaging API imports this module; the SDK's
# point classes are imported by ``drain``, which runs in the anomaly reader.

__all__ = ["FED_METRICS", "SCALE", "Feed", "Subscription", "feed_for", "subscribe"]

#: The instruments the messaging API hands over directly (when a reader subscribed).
FED_METRICS: Final = frozenset({semconv.METRIC_PROCESS_DURATION, semconv.METRIC_EVENT_AGE})
SCALE: Final = 5
EXEMPLARS_KEPT: Final = 4
_FACTOR: Final = 2.0**SCALE
_log2 = math.log2
_ceil = math.ceil


def _exemplar_filter() -> str:
    value = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based").strip().lower()
    return value if value in ("always_on", "always_off", "trace_based") else "trace_based"


class _Exemplar(NamedTuple):
    """What the series conversion reads of an exemplar."""

    trace_id: int
    span_id: int
    value: float
    time_unix_nano: int
    filtered_attributes: Mapping[str, Any] | None = None


class _Histogram:
    __slots__ = ("attributes", "buckets", "count", "exemplars", "max", "min", "sum", "zero")

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.attributes = attributes
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zero = 0
        self.buckets: dict[int, int] = {}
        self.exemplars: list[_Exemplar] = []


class Subscription:
    """What one anomaly reader receives: the fed metrics its rules read, per attribute set."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names) & FED_METRICS
        self._data: dict[tuple[str, int], _Histogram] = {}
        self._start_ns = time.time_ns()
        self._filter = _exemplar_filter()

    def add(self, name: str, attributes: Mapping[str, Any], value: float, context: Context | None) -> None:
        """Add one value (called under the feed's lock). ``attributes`` must be the same
        mapping object for the same attribute set (the messaging API caches them)."""
        key = (name, id(attributes))
        histogram = self._data.get(key)
        if histogram is None:
            histogram = self._data[key] = _Histogram(attributes)
        histogram.count += 1
        histogram.sum += value
        histogram.min = min(histogram.min, value)
        histogram.max = max(histogram.max, value)
        if value > 0:
            index = _ceil(_log2(value) * _FACTOR) - 1
            buckets = histogram.buckets
            buckets[index] = buckets.get(index, 0) + 1
        else:
            histogram.zero += 1
        if context is not None and self._filter != "always_off":
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid and (self._filter == "always_on" or span_context.trace_flags.sampled):
                exemplars = histogram.exemplars
                exemplars.append(_Exemplar(span_context.trace_id, span_context.span_id, value, time.time_ns()))
                if len(exemplars) > EXEMPLARS_KEPT:
                    del exemplars[0]

    def drain(self) -> list[tuple[str, Any]]:
        """What accumulated since the last drain, as delta exponential histograms per metric
        (called under the feed's lock)."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Buckets,
            ExponentialHistogram,
            ExponentialHistogramDataPoint,
        )

        data, self._data = self._data, {}
        start, end = self._start_ns, time.time_ns()
        self._start_ns = end
        by_name: dict[str, list[Any]] = {}
        for (name, _), h in data.items():
            if h.buckets:
                low, high = min(h.buckets), max(h.buckets)
                counts = [h.buckets.get(i, 0) for i in range(low, high + 1)]
            else:
                low, counts = 0, []
            by_name.setdefault(name, []).append(
                ExponentialHistogramDataPoint(
                    attributes=h.attributes,
                    start_time_unix_nano=start,
                    time_unix_nano=end,
                    count=h.count,
                    sum=h.sum,
                    scale=SCALE,
                    zero_count=h.zero,
                    positive=Buckets(offset=low, bucket_counts=counts),
                    negative=Buckets(offset=0, bucket_counts=[]),
                    flags=0,
                    min=h.min,
                    max=h.max,
                    exemplars=list(h.exemplars),  # type: ignore[arg-type]
                )
            )
        return [
            (name, ExponentialHistogram(data_points=points, aggregation_temporality=AggregationTemporality.DELTA))
            for name, points in by_name.items()
        ]


class Feed:
    """The subscriptions of one MeterProvider's anomaly readers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscriptions: tuple[Subscription, ...] = ()

    def record(self, name: str, attributes: Mapping[str, Any], value: float, context: Context | None) -> None:
        with self.lock:
            for subscription in self.subscriptions:
                if name in subscription.names:
                    subscription.add(name, attributes, value, context)

    def drain(self, subscription: Subscription) -> list[tuple[str, Any]]:
        with self.lock:
            return subscription.drain()


# by the SDK's measurement consumer of a MeterProvider (what both a reader and an
# instrument's provider can reach); a version that changes on every (un)subscription
_feeds: weakref.WeakKeyDictionary[object, Feed] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
version = 0


def subscribe(consumer: object, names: Iterable[str]) -> Subscription | None:
    """Subscribe a reader of the provider whose measurement consumer is ``consumer`` to the
    fed metrics among ``names``; ``None`` when it reads none of them."""
    global version
    subscription = Subscription(names)
    if not subscription.names:
        return None
    with _lock:
        feed = _feeds.get(consumer)
        if feed is None:
            feed = _feeds[consumer] = Feed()
        with feed.lock:
            feed.subscriptions = (*feed.subscriptions, subscription)
        version += 1
    return subscription


def unsubscribe(consumer: object, subscription: Subscription) -> None:
    global version
    with _lock:
        feed = _feeds.get(consumer)
        if feed is not None:
            with feed.lock:
                feed.subscriptions = tuple(s for s in feed.subscriptions if s is not subscription)
        version += 1


def feed_for(consumer: object) -> Feed | None:
    """The feed of a provider's measurement consumer, if a reader subscribed there."""
    if consumer is None:
        return None
    try:
        feed = _feeds.get(consumer)
    except TypeError:  # not weak-referenceable: never subscribed
        return None
    return feed if feed is not None and feed.subscriptions else None


def _fresh_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for feed in list(_feeds.values()):
        feed.lock = threading.Lock()
        for subscription in feed.subscriptions:
            subscription._data = {}  # the parent's measurements: the parent's readers report them


register_fork_hook(ForkHook("anomaly feeds", after_in_child=_fresh_in_child))
