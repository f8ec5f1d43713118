"""Attribute and metric names used by otel-eda.

The OpenTelemetry messaging conventions are still incubating and live in a private,
changing module of ``opentelemetry-semantic-conventions``; their string values are copied
here so that otel-eda does not depend on that module. Names with the ``eda.`` prefix are
otel-eda's own, used where the conventions have no name.
"""

from typing import Final

# --- OpenTelemetry messaging semantic conventions (incubating) -------------------------
MESSAGING_SYSTEM: Final = "messaging.system"
#: The remote *service* of a span. otel-eda does not set it on messaging spans (the broker
#: is not a service); Zipkin needs a remote endpoint for its dependency graph, so the
#: ``zipkin_eda`` exporter derives one from ``messaging.system``, and on the Collector route
#: a transform processor copies ``messaging.system`` into it (collector-config.yaml).
PEER_SERVICE: Final = "peer.service"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_MESSAGE_CONVERSATION_ID: Final = "messaging.message.conversation_id"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
ERROR_TYPE: Final = "error.type"
#: The OpenTelemetry exception conventions: the span event and its (log record) attributes.
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"

OPERATION_TYPE_SEND: Final = "send"
OPERATION_TYPE_RECEIVE: Final = "receive"
OPERATION_TYPE_PROCESS: Final = "process"
OPERATION_TYPE_SETTLE: Final = "settle"

METRIC_SENT_MESSAGES: Final = "messaging.client.sent.messages"
METRIC_CONSUMED_MESSAGES: Final = "messaging.client.consumed.messages"
METRIC_PROCESS_DURATION: Final = "messaging.process.duration"
METRIC_OPERATION_DURATION: Final = "messaging.client.operation.duration"

# --- otel-eda's own names ---------------------------------------------------------------
#: Instrumentation scope of otel-eda's core (spans and metrics of the bus and the messaging
#: API, self-metrics); an instrumentation of a client library uses ``otel_eda.<transport>``.
SCOPE: Final = "otel_eda"
#: ``messaging.system`` value of otel-eda's embedded transports.
MESSAGING_SYSTEM_EDA: Final = "otel_eda"

EDA_CORRELATION_ID: Final = "eda.correlation_id"
EDA_CAUSATION_ID: Final = "eda.causation_id"
EDA_EVENT_TYPE: Final = "eda.event_type"
EDA_BUSINESS_KEY: Final = "eda.business_key"
EDA_DELIVERY_ATTEMPT: Final = "eda.delivery.attempt"
#: Trace and span id (lower-case hex) of the producer span a consumer span links to.
#: Zipkin drops span links; these attributes keep the causation followable there.
EDA_PRODUCER_TRACE_ID: Final = "eda.producer.trace_id"
EDA_PRODUCER_SPAN_ID: Final = "eda.producer.span_id"
#: Seconds spent in the stage that a lifecycle span event closes.
EDA_STAGE_SECONDS: Final = "eda.stage.duration"
#: How a handling attempt ended: completed, failed, retried, dead_lettered, rejected
#: (``otel_eda.messaging.Outcome``); on every process span.
EDA_OUTCOME: Final = "eda.outcome"
#: Seconds the message waited before this attempt started (in a queue, or backing off
#: before a retry); on process spans. The conventions have no attribute for it (semconv#792).
EDA_QUEUE_DURATION: Final = "eda.queue.duration"
#: ``true`` on a pull consumer's process span ended at ``OTEL_EDA_PROCESS_SPAN_MAX_S``
#: because the application neither asked for the next message nor committed.
EDA_PROCESS_TRUNCATED: Final = "eda.process.truncated"
#: Prefix of the span attributes carrying the metadata keys of ``OTEL_EDA_METADATA_ATTRIBUTES``.
EDA_METADATA_PREFIX: Final = "eda.metadata."

#: The lifecycle stage a lifecycle log record reports (``retried``, ``dead_lettered``, ...).
EDA_STAGE: Final = "eda.stage"
#: Name of the logger (and instrumentation scope) of otel-eda's lifecycle log records.
LIFECYCLE_LOGGER: Final = "otel_eda.lifecycle"

# lifecycle span events
EVENT_RECEIVED: Final = "eda.received"
EVENT_PROCESSING: Final = "eda.processing"
EVENT_COMPLETED: Final = "eda.completed"
EVENT_FAILED: Final = "eda.failed"
EVENT_RETRIED: Final = "eda.retried"
EVENT_DEAD_LETTERED: Final = "eda.dead_lettered"

# attributes of otel-eda's self-metrics
EDA_SETTING: Final = "eda.setting"
EDA_FIELD: Final = "eda.field"
EDA_REASON: Final = "eda.reason"
EDA_COMPONENT: Final = "eda.component"
EDA_EXPORTER: Final = "eda.exporter"
OTEL_COMPONENT_TYPE: Final = "otel.component.type"

# otel-eda metrics
#: Observable counter of spans an export pipeline lost (otel-eda's own name: the SDK's
#: ``otel.sdk.processor.span.processed`` only exists when its internal metrics are on,
#: and does not count failed exports).
METRIC_SPANS_LOST: Final = "eda.export.spans.lost"
METRIC_INVALID_HEADERS: Final = "eda.propagation.invalid"
METRIC_QUEUE_DEPTH: Final = "eda.bus.queue.depth"
METRIC_DROPPED: Final = "eda.bus.dropped"
METRIC_UNROUTED: Final = "eda.bus.unrouted"
METRIC_RETRIES: Final = "eda.bus.retries"
METRIC_DEAD_LETTERS: Final = "eda.bus.dead_letters"
#: Messages still queued (or being handled) in an embedded bus when the process exited or the
#: bus was dropped without ``close()``: never handled. Attributes as ``eda.bus.dropped``.
METRIC_UNHANDLED: Final = "eda.bus.unhandled"
METRIC_INTERNAL_ERRORS: Final = "eda.internal.errors"
#: Invalid ``OTEL_EDA_*`` settings and failed SDK configurations, by ``eda.setting``.
METRIC_CONFIG_ERRORS: Final = "eda.config.errors"
#: Seconds from an event's creation (the ``eda-event-created`` header) to the start of its
#: handling: end-to-end lag. The conventions have no time-in-queue metric (semconv#792).
METRIC_EVENT_AGE: Final = "eda.event.age"
#: Events whose creation time lay in the consumer's future (clock skew): their age is 0.
METRIC_CLOCK_SKEW: Final = "eda.event.clock_skew"

#: Histogram bucket boundaries for durations in seconds (1 ms ... 60 s).
DURATION_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)

# --- alert rules' metrics (issue 23) ------------------------------------------------------
#: Messages waiting in a subscriber queue of the embedded bus as a share of its
#: ``queue_size`` (``1``: full), attributes as ``eda.bus.queue.depth``. A gauge in ``1``:
#: the backpressure rules need the capacity, which the depth alone does not tell.
METRIC_QUEUE_UTILIZATION: Final = "eda.bus.queue.utilization"
#: Seconds a publish waited for room in a full subscriber queue of the embedded bus
#: (histogram, recorded only for publishes that found a queue full; attributes
#: ``messaging.system``, ``messaging.destination.name``).
METRIC_PUBLISH_WAIT: Final = "eda.bus.publish.wait.duration"
#: Messages in a broker's queue (RabbitMQ's ready messages, ...): an observable gauge in
#: ``{message}``, attributes ``messaging.system``, ``messaging.destination.name``.
METRIC_BROKER_QUEUE_DEPTH: Final = "eda.broker.queue.depth"
#: Records a consumer group is behind the partition's high watermark: an observable gauge in
#: ``{message}``, attributes ``messaging.destination.name``,
#: ``messaging.destination.partition.id``, ``messaging.consumer.group.name`` (semconv #792).
METRIC_CONSUMER_LAG: Final = "eda.consumer.lag"
MESSAGING_DESTINATION_PARTITION_ID: Final = "messaging.destination.partition.id"
#: Event name of the alert log records.
EVENT_ALERT: Final = "eda.alert"
#: Log record attribute carrying an alert's state, ``firing`` or ``resolved``.
EDA_ALERT_STATE: Final = "eda.alert.state"

# --- anomaly engine self-metrics -------------------------------------------------------------
METRIC_ALERTS_DROPPED: Final = "eda.alerts.dropped"
METRIC_ALERT_SEND_FAILURES: Final = "eda.alerts.send_failures"
EDA_ALERT_SINK: Final = "eda.alert.sink"
#: Prefix of otel-eda's own names (``OTEL_EDA_BAGGAGE_KEYS`` refuses keys that start with it).
EDA_PREFIX: Final = "eda."
#: Prefix of the messaging conventions' metric names (error ratios are derived for these only).
MESSAGING_PREFIX: Final = "messaging."

# --- Kafka (aiokafka instrumentation) ---------------------------------------------------
MESSAGING_SYSTEM_KAFKA: Final = "kafka"
MESSAGING_KAFKA_OFFSET: Final = "messaging.kafka.offset"
MESSAGING_KAFKA_MESSAGE_KEY: Final = "messaging.kafka.message.key"
MESSAGING_KAFKA_MESSAGE_TOMBSTONE: Final = "messaging.kafka.message.tombstone"
#: ``true`` on a process span whose event id this process handled before in the same consumer
#: group (a replay: Kafka has no delivery counter, so ``eda.delivery.attempt`` stays 1).
EDA_DELIVERY_DUPLICATE: Final = "eda.delivery.duplicate"
#: Records handled again within the duplicate window (see EDA_DELIVERY_DUPLICATE).
METRIC_DUPLICATES: Final = "eda.delivery.duplicates"

# --- NATS (nats-py instrumentation) -----------------------------------------------------
#: ``messaging.system`` of NATS: the conventions have no well-known value for it yet
#: (semconv #2266/#2297 are open), so otel-eda writes ``nats``.
MESSAGING_SYSTEM_NATS: Final = "nats"
#: The JetStream stream a message was stored in (from the PubAck, or a delivered message's metadata).
EDA_NATS_STREAM: Final = "eda.nats.stream"
#: The message's sequence number in that stream.
EDA_NATS_STREAM_SEQUENCE: Final = "eda.nats.stream.sequence"
#: ``true`` on a JetStream send span whose PubAck says the stream already had this ``Nats-Msg-Id``.
EDA_NATS_DUPLICATE: Final = "eda.nats.duplicate"
#: How often the handler of a JetStream message called ``in_progress()`` (on its process span).
EDA_NATS_IN_PROGRESS: Final = "eda.nats.in_progress"
#: Messages a JetStream consumer delivered and that wait for their ack: an observable gauge in
#: ``{message}``, attributes ``messaging.system``, ``messaging.destination.name`` (the stream),
#: ``messaging.consumer.group.name`` (the consumer). No convention exists yet.
METRIC_CONSUMER_ACK_PENDING: Final = "eda.consumer.ack_pending"

# --- RabbitMQ (aio-pika and pika instrumentations) -------------------------------------------------
MESSAGING_SYSTEM_RABBITMQ: Final = "rabbitmq"
MESSAGING_RABBITMQ_ROUTING_KEY: Final = "messaging.rabbitmq.destination.routing_key"
MESSAGING_RABBITMQ_DELIVERY_TAG: Final = "messaging.rabbitmq.message.delivery_tag"
#: On the process span of a message a dead-letter exchange moved (its ``x-death`` header): why
#: (``rejected``, ``expired``, ``maxlen``, ``delivery_limit``), from which queue, how many times.
EDA_DEAD_LETTER_REASON: Final = "eda.dead_letter.reason"
EDA_DEAD_LETTER_QUEUE: Final = "eda.dead_letter.queue"
EDA_DEAD_LETTER_COUNT: Final = "eda.dead_letter.count"
#: Consumers of a broker's queue: an observable gauge in ``{consumer}``, attributes as
#: ``eda.broker.queue.depth``.
METRIC_BROKER_QUEUE_CONSUMERS: Final = "eda.broker.queue.consumers"
#: Messages a broker dead-lettered, counted when an instrumented consumer reads them from the
#: dead-letter queue (attributes ``messaging.system``, ``messaging.destination.name``: the queue
#: that dead-lettered them, ``eda.dead_letter.reason``).
METRIC_BROKER_DEAD_LETTERS: Final = "eda.broker.dead_letters"
#: Messages the broker refused with a publisher-confirms nack after their send span had ended
#: (pika's ``SelectConnection``: confirms arrive later, on a callback), attributes
#: ``messaging.system``, ``messaging.destination.name``.
METRIC_BROKER_NACKS: Final = "eda.broker.nacks"

# --- Redis Streams (redis-py instrumentation) ---------------------------------------------
#: ``messaging.system`` of Redis Streams: the conventions have no well-known value for Redis
#: yet (semconv #2266), so otel-eda uses ``redis``.
MESSAGING_SYSTEM_REDIS: Final = "redis"
#: Entries delivered to a consumer group and not acknowledged yet (its pending entries list):
#: an observable gauge in ``{message}``, attributes ``messaging.system``,
#: ``messaging.destination.name``, ``messaging.consumer.group.name``.
METRIC_CONSUMER_PENDING: Final = "eda.consumer.pending"
