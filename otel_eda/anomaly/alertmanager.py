"""Deliver alerts to a Prometheus Alertmanager through its v2 API (``POST /api/v2/alerts``).

How otel-eda's alert lifecycle maps onto Alertmanager's:

* Alertmanager identifies an alert by its **label set** (the fingerprint). The labels are the
  alert's low-cardinality :attr:`~otel_eda.anomaly.alerts.Alert.labels` (alertname, rule,
  severity, the series labels incl. ``service``); everything else — summary, value,
  threshold, score and the exemplars' ``trace_ids``/``span_ids`` — goes into annotations.
  Alertmanager only accepts label and annotation *names* matching ``[a-zA-Z_][a-zA-Z0-9_]*``
  (0.25 answers 400 otherwise), so any other character in a name becomes ``_``
  (``messaging.destination.name`` → ``messaging_destination_name``), as Prometheus does.
* A firing alert is posted at once, then re-sent every ``resend_interval_s`` while it lasts,
  each time with ``endsAt`` = now + ``resolve_timeout_s`` (3 times the resend interval by
  default): if otel-eda dies, Alertmanager resolves the alert by itself shortly after.
* A resolved alert is posted with ``endsAt`` = its end time, until one post succeeds (or
  until ``resolve_timeout_s`` has passed, when Alertmanager has expired it anyway).
* **Escalation**: severity is a label, so a warning that becomes critical is, for
  Alertmanager, a second alert. When a change arrives with another label set for the same
  :attr:`~otel_eda.anomaly.alerts.Alert.key` (rule + series), the sink resolves the old label
  set (``endsAt`` = the time of the change) in the same post that fires the new one, so the
  old severity does not stay active (and, with an inhibition rule, mute nothing).

Threading: :meth:`AlertmanagerSink.send` only records the change under a lock and wakes the
sink's own daemon thread, which does every HTTP request (urllib, with a timeout). The sink
holds at most ``queue_size`` alerts (one entry per alert key: firing ones being re-sent plus
changes not yet delivered). Changes to an alert it already holds are never dropped (they
replace the held entry); when it is full, an alert for a *new* key is dropped — the new one,
not an old one, since evicting a held alert would either make Alertmanager resolve a
still-firing alert or keep re-sending an alert whose resolve was lost. Drops are counted
(:attr:`AlertmanagerSink.dropped`, counter ``eda.alerts.dropped``) and logged once per burst.
Failed posts (connection refused, timeout, non-2xx) are counted
(:attr:`AlertmanagerSink.failed_posts`, counter ``eda.alerts.send_failures``), logged at
WARNING at most once per minute while they last, and retried at the next resend tick.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context, metrics

from otel_eda import otel_internals, semconv
from otel_eda.anomaly.alerts import Alert, AlertState
from otel_eda.anomaly.callbacks import count_send_failure, send_failure_counter
from otel_eda.process_hooks import ForkHook, register_fork_hook
from otel_eda.version import VERSION as __version__

__all__ = ["METRIC_ALERTS_DROPPED", "AlertmanagerSink", "postable_alert"]

_log = logging.getLogger("otel_eda.alerts")

#: Counter of alerts the Alertmanager sink dropped because it was full.
METRIC_ALERTS_DROPPED = semconv.METRIC_ALERTS_DROPPED

_VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INVALID_CHAR = re.compile(r"[^A-Za-z0-9_]")
#: while posts keep failing, at most one WARNING per this many seconds
_WARN_EVERY_S = 60.0
#: longest error body quoted in a log line
_MAX_DETAIL = 300


def _label_name(name: str) -> str:
    if _VALID_NAME.fullmatch(name):
        return name
    fixed = _INVALID_CHAR.sub("_", name)
    return fixed if fixed[:1].isalpha() or fixed[:1] == "_" else "_" + fixed


def _label_set(mapping: Mapping[str, str]) -> dict[str, str]:
    """``mapping`` with names Alertmanager accepts (invalid characters become ``_``)."""
    return {_label_name(name): str(value) for name, value in mapping.items()}


def _rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def postable_alert(
    alert: Alert,
    *,
    now: float,
    resolve_timeout_s: float,
    generator_url: str | None = None,
    labels: Mapping[str, str] | None = None,
    ends_at: float | None = None,
) -> dict[str, Any]:
    """The Alertmanager v2 JSON object (``postableAlert``) for ``alert`` at time ``now``.

    A firing alert ends at ``now + resolve_timeout_s`` (the sink re-sends it before then), a
    resolved one at its ``ended_at`` (``now`` if unset); ``ends_at`` overrides both, and
    ``labels`` the alert's own labels. ``endsAt`` is never before ``startsAt`` (Alertmanager
    rejects that). Times are RFC 3339 in UTC.

    >>> from otel_eda.anomaly.alerts import Alert, AlertState, Exemplar, Severity
    >>> alert = Alert(name="LatencyHigh", rule="latency", severity=Severity.WARNING,
    ...               state=AlertState.FIRING, series_labels={"service": "orders"}, value=2.5,
    ...               threshold=1.0, score=0.9, started_at=1_800_000_000.0, ended_at=None,
    ...               summary="p95 2.5 s > 1 s", exemplars=(Exemplar("ab" * 16, "cd" * 8),))
    >>> body = postable_alert(alert, now=1_800_000_030.0, resolve_timeout_s=180)
    >>> body["labels"]
    {'service': 'orders', 'alertname': 'LatencyHigh', 'rule': 'latency', 'severity': 'warning'}
    >>> body["startsAt"], body["endsAt"]
    ('2027-01-15T08:00:00.000Z', '2027-01-15T08:03:30.000Z')
    >>> body["annotations"]["trace_ids"] == "ab" * 16
    True
    """
    if ends_at is None:
        if alert.state is AlertState.RESOLVED:
            ends_at = alert.ended_at if alert.ended_at is not None else now
        else:
            ends_at = now + resolve_timeout_s
    body: dict[str, Any] = {
        "labels": dict(labels) if labels is not None else _label_set(alert.labels),
        "annotations": _label_set(alert.annotations()),
        "startsAt": _rfc3339(alert.started_at),
        "endsAt": _rfc3339(max(ends_at, alert.started_at)),
    }
    if generator_url:
        body["generatorURL"] = generator_url
    return body


_Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclasses.dataclass(slots=True)
class _Stale:
    """A label set of an alert key that must be resolved (the severity before a change)."""

    alert: Alert
    labels: dict[str, str]
    ended_at: float  # epoch seconds


@dataclasses.dataclass(slots=True)
class _Entry:
    """The sink's state for one alert key."""

    alert: Alert
    labels: dict[str, str]
    #: bumped on every change that must be delivered
    version: int
    #: monotonic time of the next post of this entry
    due: float
    #: a change not yet delivered
    changed: bool
    #: monotonic time the alert was resolved (give-up clock for undeliverable resolves)
    resolved_mono: float | None
    stale: list[_Stale]


@dataclasses.dataclass(frozen=True, slots=True)
class _Snapshot:
    key: _Key
    version: int
    alert: Alert
    labels: dict[str, str]
    stale: tuple[_Stale, ...]


_SINKS: weakref.WeakSet[AlertmanagerSink] = weakref.WeakSet()


def _reset_sinks_after_fork() -> None:
    for sink in list(_SINKS):
        sink._after_fork()


register_fork_hook(ForkHook("alertmanager sinks", after_in_child=_reset_sinks_after_fork))


class AlertmanagerSink:
    """An alert sink posting to a Prometheus Alertmanager (v2 API) from a thread of its own.

    ``url`` is Alertmanager's base URL (``http://127.0.0.1:9093``). Firing alerts are re-sent
    every ``resend_interval_s`` with ``endsAt`` = now + ``resolve_timeout_s`` (default 3 times
    the resend interval; it must be longer than the interval); ``queue_size`` bounds the
    alerts held (see the module documentation for what is dropped when full); ``timeout_s``
    bounds each HTTP request; ``generator_url`` is passed on as ``generatorURL``; the
    ``eda.alerts.send_failures`` and ``eda.alerts.dropped`` counters come from
    ``meter_provider`` (default: the global one).

    :meth:`send` never blocks on the network and never raises. Call :meth:`shutdown` to post
    what is pending (one last attempt) and stop the thread; the thread is a daemon, so an
    interpreter that exits without it loses undelivered changes (Alertmanager then resolves
    the firing alerts by itself after ``resolve_timeout_s``). In a forked child the sink
    starts empty: the parent keeps delivering what it held.

    Attributes for tests and health checks: :attr:`posts` (successful posts),
    :attr:`failed_posts`, :attr:`dropped`, :attr:`pending`.

    >>> sink = AlertmanagerSink("http://127.0.0.1:9093", resend_interval_s=30)
    >>> sink.endpoint, sink.resolve_timeout_s
    ('http://127.0.0.1:9093/api/v2/alerts', 90.0)
    >>> sink.pending, sink.failed_posts, sink.dropped
    (0, 0, 0)
    >>> sink.shutdown()  # nothing was sent: no thread, no request
    True
    """

    def __init__(
        self,
        url: str,
        *,
        resend_interval_s: float = 60.0,
        resolve_timeout_s: float | None = None,
        queue_size: int = 1000,
        timeout_s: float = 5.0,
        generator_url: str | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Alertmanager URL must start with http:// or https://, not {url!r}")
        if not resend_interval_s > 0:
            raise ValueError(f"resend_interval_s must be > 0, not {resend_interval_s!r}")
        if resolve_timeout_s is None:
            resolve_timeout_s = 3.0 * resend_interval_s
        if not resolve_timeout_s > resend_interval_s:
            raise ValueError(
                f"resolve_timeout_s ({resolve_timeout_s!r}) must be longer than resend_interval_s "
                f"({resend_interval_s!r}), or Alertmanager resolves firing alerts between two re-sends"
            )
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, not {queue_size!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s!r}")
        self.url = url.rstrip("/")
        self.endpoint = self.url + "/api/v2/alerts"
        self.resend_interval_s = float(resend_interval_s)
        self.resolve_timeout_s = float(resolve_timeout_s)
        self.queue_size = queue_size
        self.timeout_s = float(timeout_s)
        self.generator_url = generator_url
        self._opener = urllib.request.build_opener()
        self._failures_counter = send_failure_counter(meter_provider)
        self._dropped_counter = metrics.get_meter(
            "otel_eda", __version__, meter_provider=meter_provider
        ).create_counter(
            METRIC_ALERTS_DROPPED,
            unit="{alert}",
            description="Alerts dropped by an alert sink because it was full",
        )
        #: successful posts
        self.posts = 0
        #: posts that failed (connection refused, timeout, non-2xx answer)
        self.failed_posts = 0
        #: alerts dropped because the sink was full (or sent after shutdown)
        self.dropped = 0
        self._init_state()
        with self._lock:
            self._ensure_thread()
        _SINKS.add(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._entries: dict[_Key, _Entry] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop_deadline: float | None = None
        #: no regular post before this monotonic time (set after a failure: the next tick)
        self._retry_at = 0.0
        self._flush_requested = 0
        self._flush_served = 0
        #: monotonic time the worker sleeps until (inf: until notified; -inf: busy, it will look
        #: at the entries before sleeping again). send() wakes it only if a change is due earlier.
        self._wake_at = -math.inf
        self._dropping = False
        # worker-thread-only state
        self._failure_streak = 0
        self._last_warning = -_WARN_EVERY_S

    def _after_fork(self) -> None:
        self._init_state()

    # ------------------------------------------------------------------ caller side

    @property
    def pending(self) -> int:
        """Alerts held: firing ones being re-sent plus changes not delivered yet (≤ ``queue_size``)."""
        with self._lock:
            return len(self._entries)

    def send(self, alert: Alert) -> None:
        """Record an alert change for delivery; returns at once, never raises."""
        try:
            self._send(alert)
        except Exception:  # pragma: no cover - defensive: never raise into the engine
            _log.error("AlertmanagerSink.send failed; the alert engine continues", exc_info=True)

    def _send(self, alert: Alert) -> None:
        labels = _label_set(alert.labels)
        now = time.monotonic()
        dropped = first_drop = wake = False
        with self._cond:
            if self._closed:
                self.dropped += 1
                _log.debug("AlertmanagerSink is shut down: alert %s not sent", alert.name)
                return
            resolved_mono = now if alert.state is AlertState.RESOLVED else None
            entry = self._entries.get(alert.key)
            if entry is None:
                if len(self._entries) >= self.queue_size:
                    self.dropped += 1
                    dropped, first_drop = True, not self._dropping
                    self._dropping = True
                else:
                    self._dropping = False
                    self._entries[alert.key] = _Entry(alert, labels, 1, now, True, resolved_mono, [])
                    wake = True
            else:
                old = entry.alert
                if labels != entry.labels:
                    # Severity (or another label) changed: Alertmanager sees another alert, so
                    # the old label set must be resolved or it would stay active until it expires.
                    ended = old.ended_at if old.state is AlertState.RESOLVED and old.ended_at else time.time()
                    entry.stale = [s for s in entry.stale if s.labels not in (labels, entry.labels)]
                    entry.stale.append(_Stale(old, entry.labels, ended))
                    entry.labels = labels
                    entry.version += 1
                    entry.changed, entry.due = True, now
                    wake = True
                elif alert.state is not old.state or entry.changed:
                    entry.version += 1
                    entry.changed, entry.due = True, now
                    wake = True
                # else: same labels, still firing and delivered: the new annotations (value,
                # exemplars) go out with the next re-send, without an extra post.
                entry.alert = alert
                entry.resolved_mono = resolved_mono
            if wake:
                self._ensure_thread()
                # Wake the worker only if it sleeps past the moment this change may be posted
                # (not while it backs off after a failure, nor while it is busy posting).
                if max(self._retry_at, now) < self._wake_at:
                    self._cond.notify()
        if dropped:
            if first_drop:
                _log.warning(
                    "Alertmanager sink full (%d alerts held): dropping new alerts (first: %s); "
                    "changes to held alerts are still delivered",
                    self.queue_size,
                    alert.name,
                )
            try:
                self._dropped_counter.add(1, {semconv.EDA_ALERT_SINK: "alertmanager"})
            except Exception:  # pragma: no cover - a broken meter must not break send()
                _log.debug("could not count a dropped alert", exc_info=True)

    def _ensure_thread(self) -> None:
        # caller holds the lock
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otel-eda-alertmanager", daemon=True)
            self._thread.start()

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Post every undelivered change now (even while retries wait for the next tick).

        Returns True when nothing is left undelivered. For tests and shutdown paths.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._thread is None or self._closed:
                return not any(e.changed for e in self._entries.values())
            self._flush_requested += 1
            generation = self._flush_requested
            self._cond.notify_all()
            while self._flush_served < generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return not any(e.changed for e in self._entries.values())

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Post what is pending (one last attempt, within ``timeout_s``) and stop the thread.

        Later :meth:`send` calls are ignored. Returns True when everything was delivered and
        the thread stopped in time.
        """
        with self._cond:
            if self._closed:
                return self._thread is None or not self._thread.is_alive()
            self._closed = True
            self._stop_deadline = time.monotonic() + timeout_s
            thread = self._thread
            self._cond.notify_all()
        if thread is None:
            return True
        thread.join(timeout_s)
        with self._lock:
            delivered = not any(e.changed for e in self._entries.values())
        return delivered and not thread.is_alive()

    def __repr__(self) -> str:
        return f"AlertmanagerSink({self.url!r}, resend_interval_s={self.resend_interval_s:g})"

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        # The sink's own HTTP requests must not be traced by an urllib instrumentation.
        token = context.attach(otel_internals.suppress_instrumentation())
        try:
            while True:
                try:
                    if not self._cycle():
                        return
                except Exception:  # pragma: no cover - defensive: keep delivering
                    _log.error("Alertmanager sink thread failed; retrying", exc_info=True)
                    time.sleep(min(1.0, self.resend_interval_s))
        finally:
            context.detach(token)

    def _cycle(self) -> bool:
        """Wait for work, post one batch, settle it. False when the sink has stopped."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._closed:
                    batch = self._snapshot(e for e in self._entries.items() if e[1].changed)
                    timeout = max(0.01, min(self.timeout_s, (self._stop_deadline or now) - now))
                    flush = -1
                    break
                if self._flush_requested > self._flush_served:
                    batch = self._snapshot(e for e in self._entries.items() if e[1].changed)
                    timeout = self.timeout_s
                    flush = self._flush_requested
                    break
                if self._entries:
                    first_due = max(self._retry_at, min(e.due for e in self._entries.values()))
                    if first_due <= now:
                        # Coalesce: whatever falls due within half an interval goes in this post.
                        horizon = now + self.resend_interval_s / 2
                        batch = self._snapshot(e for e in self._entries.items() if e[1].due <= horizon)
                        timeout = self.timeout_s
                        flush = 0
                        break
                    self._wake_at = first_due
                    self._cond.wait(first_due - now)
                else:
                    self._wake_at = math.inf
                    self._cond.wait()
            self._wake_at = -math.inf
        ok = self._post(batch, timeout) if batch else True
        with self._cond:
            self._settle(batch, ok)
            if flush > 0:
                self._flush_served = max(self._flush_served, flush)
            self._cond.notify_all()
        return flush >= 0

    @staticmethod
    def _snapshot(items: Iterable[tuple[_Key, _Entry]]) -> list[_Snapshot]:
        return [_Snapshot(key, e.version, e.alert, e.labels, tuple(e.stale)) for key, e in items]

    def _settle(self, batch: list[_Snapshot], ok: bool) -> None:
        # caller holds the lock
        now = time.monotonic()
        if not batch:
            return
        if not ok:
            self._retry_at = now + self.resend_interval_s
        else:
            self._retry_at = 0.0
        for snap in batch:
            entry = self._entries.get(snap.key)
            if entry is None:
                continue
            current = entry.version == snap.version
            if ok:
                if snap.stale:
                    entry.stale = [s for s in entry.stale if not any(s is t for t in snap.stale)]
                if not current:
                    continue  # changed during the post: its own post is due now
                entry.changed = False
                if entry.alert.state is AlertState.RESOLVED:
                    del self._entries[snap.key]
                else:
                    entry.due = now + self.resend_interval_s
            elif current:
                entry.due = now + self.resend_interval_s
                if entry.resolved_mono is not None and now - entry.resolved_mono >= self.resolve_timeout_s:
                    # Alertmanager has expired the firing copy by now: stop trying.
                    _log.debug("giving up the resolve of %s after %.3gs", entry.alert.name, self.resolve_timeout_s)
                    del self._entries[snap.key]

    def _payload(self, batch: list[_Snapshot]) -> list[dict[str, Any]]:
        now = time.time()
        payload: list[dict[str, Any]] = []
        for snap in batch:
            for stale in snap.stale:
                payload.append(
                    postable_alert(
                        stale.alert,
                        now=now,
                        resolve_timeout_s=self.resolve_timeout_s,
                        generator_url=self.generator_url,
                        labels=stale.labels,
                        ends_at=stale.ended_at,
                    )
                )
            payload.append(
                postable_alert(
                    snap.alert,
                    now=now,
                    resolve_timeout_s=self.resolve_timeout_s,
                    generator_url=self.generator_url,
                    labels=snap.labels,
                )
            )
        return payload

    def _post(self, batch: list[_Snapshot], timeout: float) -> bool:
        try:
            body = json.dumps(self._payload(batch), separators=(",", ":")).encode()
        except Exception:  # pragma: no cover - alerts hold only str/float: cannot happen
            _log.error("could not encode %d alerts for Alertmanager", len(batch), exc_info=True)
            return False
        request = urllib.request.Request(
            self.endpoint,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"otel-eda/{__version__}"},
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read()
                status = int(response.status)
            if not 200 <= status < 300:  # pragma: no cover - urllib raises HTTPError for these
                self._failed(str(status), f"HTTP {status}")
                return False
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(_MAX_DETAIL).decode("utf-8", "replace").strip()
            except Exception:
                detail = ""
            self._failed(str(exc.code), f"HTTP {exc.code} {detail}".strip())
            return False
        except urllib.error.URLError as exc:
            reason = exc.reason
            error_type = type(reason).__name__ if isinstance(reason, BaseException) else "URLError"
            self._failed(error_type, str(reason))
            return False
        except (OSError, ValueError) as exc:  # timeouts while reading, malformed URL, ...
            self._failed(type(exc).__name__, str(exc) or type(exc).__name__)
            return False
        self.posts += 1
        if self._failure_streak:
            _log.warning("Alertmanager %s reachable again after %d failed posts", self.endpoint, self._failure_streak)
            self._failure_streak = 0
        return True

    def _failed(self, error_type: str, detail: str) -> None:
        self.failed_posts += 1
        self._failure_streak += 1
        count_send_failure(self._failures_counter, "alertmanager", error_type)
        now = time.monotonic()
        if self._failure_streak == 1 or now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            _log.warning(
                "could not post alerts to Alertmanager %s: %s (%d failed posts in a row; retrying every %gs)",
                self.endpoint,
                detail[:_MAX_DETAIL],
                self._failure_streak,
                self.resend_interval_s,
            )
        else:
            _log.debug("could not post alerts to Alertmanager %s: %s", self.endpoint, detail[:_MAX_DETAIL])
