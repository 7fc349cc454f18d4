"""Dead letters to Kafka: each rejected record, Avro-encoded in the DeadLetter envelope (with
its original bytes), produced to the dead-letter topic keyed by ``dead_letter_id``."""
from __future__ import annotations

import atexit
from typing import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import DEAD_LETTER, SchemaRegistry
from cx360.transforms.kafka_io import KafkaConfig, producer


_PRODUCERS: dict = {}


def shared_producer(config: KafkaConfig):
    """One producer per process and cluster, reused by every pipeline the process runs (the
    local runner builds one per micro-batch): creating one costs ~0.5-1.5 s of metadata and
    API-version round trips. A producer is thread-safe; flush() waits for this bundle's
    sends like the others'."""
    kafka_producer = _PRODUCERS.get(config)
    if kafka_producer is None:
        kafka_producer = _PRODUCERS[config] = producer(config)
        atexit.register(kafka_producer.close, timeout=10)
    return kafka_producer


class ProduceDeadLettersFn(beam.DoFn):
    """At-least-once: a re-run batch may produce a dead letter again; consumers de-duplicate
    by ``dead_letter_id`` (topic/partition/offset of the original)."""

    def __init__(self, config: KafkaConfig, topic: str, registry: SchemaRegistry):
        self.config = config
        self.topic = topic
        self.registry = registry
        self._producer = None
        self._codec = None
        self._futures = []

    def setup(self):
        self._producer = shared_producer(self.config)
        self._codec = AvroCodec(self.registry)

    def start_bundle(self):
        self._futures = []

    def process(self, dead: dict) -> Iterator[None]:
        value = self._codec.encode(DEAD_LETTER, dead)
        self._futures.append(self._producer.send(
            self.topic, key=dead["dead_letter_id"].encode(), value=value))
        return iter(())

    def finish_bundle(self):
        self._producer.flush()
        for future in self._futures:
            future.get(timeout=30)  # raises: the bundle is retried, nothing is lost
        Metrics.counter("cx360.dead_letter", "produced").inc(len(self._futures))
        self._futures = []

    def teardown(self):
        self._producer = None  # shared with later pipelines of this process; closed at exit
