"""The real Kafka of ``scripts/kafka``: where it listens, and a record with headers through aiokafka."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from brokers import KafkaBroker, client_config, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_broker_listens_on_127_0_0_1_only(kafka: KafkaBroker) -> None:
    listening = kafka.listening_addresses()
    assert listening == {("tcp", "127.0.0.1", kafka.port), ("tcp", "127.0.0.1", kafka.controller_port)}


async def test_record_with_headers_round_trips(kafka: KafkaBroker) -> None:
    topic = unique_name("roundtrip")
    headers = [("order", b"42"), ("dup", b"first"), ("dup", b"second"), ("binary", b"\xff\x00\xfe")]
    producer = AIOKafkaProducer(**client_config(kafka))
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"payload", key=b"k1", headers=headers)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        **client_config(kafka, group_id=unique_name("group"), auto_offset_reset="earliest", enable_auto_commit=False),
    )
    await consumer.start()
    try:
        record = await consumer.getone()
        await consumer.commit()
        committed = await consumer.committed(TopicPartition(record.topic, record.partition))
    finally:
        await consumer.stop()
    assert (record.topic, record.offset, record.key, record.value) == (topic, sent.offset, b"k1", b"payload")
    assert list(record.headers) == headers  # order and duplicate keys kept, bytes untouched
    assert committed == sent.offset + 1
