"""Producing and consuming in tests, without the broker features some brokers get wrong."""
from __future__ import annotations

import time

from cx360.transforms.kafka_io import KafkaConfig, consumer, producer


def produce(config: KafkaConfig, topic: str, records, partition: int | None = None,
            timestamps_ms=None):
    """Send (key, value) pairs; returns [(partition, offset, key, value)] in send order."""
    kafka_producer = producer(config)
    records = list(records)
    stamps = list(timestamps_ms) if timestamps_ms is not None else [None] * len(records)
    try:
        futures = [(kafka_producer.send(topic, key=key, value=value, partition=partition,
                                        timestamp_ms=stamp), key, value)
                   for (key, value), stamp in zip(records, stamps)]
        kafka_producer.flush()
        out = []
        for future, key, value in futures:
            meta = future.get(timeout=30)
            out.append((meta.partition, meta.offset, key, value))
        return out
    finally:
        kafka_producer.close()


def consume_all(config: KafkaConfig, topic: str, expected: int, timeout_s: float = 20.0):
    """Read ``expected`` records from every partition of ``topic`` from offset 0 (stops on the
    count, never asks for end offsets)."""
    from kafka import TopicPartition

    kafka_consumer = consumer(config)
    try:
        parts = kafka_consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        kafka_consumer.assign(tps)
        for tp in tps:
            kafka_consumer.seek(tp, 0)
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in kafka_consumer.poll(timeout_ms=200).values():
                out.extend(records)
        return out
    finally:
        kafka_consumer.close()
