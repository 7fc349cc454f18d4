"""Decode and validate raw Kafka records; everything that fails becomes a dead letter.

:class:`EventDecoder` is plain Python (used by the Beam DoFn, the benchmark floor and the
dead-letter replay); :class:`DecodeEvents` is the Beam transform. A dead letter keeps the
original key and value bytes, topic/partition/offset, the stage and the reason.
"""
from __future__ import annotations

import hashlib
import pickle
import time
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from cx360.schemas.codec import AvroCodec, DecodeError, JsonEventReader, subject_for_role
from cx360.schemas.registry import RegistryError, SchemaRegistry
from cx360.transforms.identity import Pseudonymiser
from cx360.transforms.kafka_io import KafkaRecord, unpack_records
from cx360.transforms.validate import DEFAULT_MAX_FUTURE_MS, validate_event

DEAD_LETTER = "dead_letter"

#: Every reason a record can be dead-lettered, with the stage(s) that can decide it
#: (a JSON event without a required field fails the schema check in 'decode'; an Avro event
#: with an empty required string fails in 'validate').
REASONS = {
    "empty_value": "decode",
    "undecodable": "decode",
    "unknown_schema_id": "decode",
    "incompatible_schema": "decode",
    "invalid_json": "decode",
    "schema_violation": "decode",
    "missing_field": "decode|validate",
    "invalid_value": "validate",
    "future_timestamp": "validate",
    "too_late": "window",
    "warehouse_rejected": "write",
}


def dead_letter(record: KafkaRecord, reason: str, detail: str, stage: str | None = None,
                schema_id: int | None = None, batch_id: str | None = None,
                failed_at_ms: int | None = None) -> dict:
    """A dead-letter row (fields of the DeadLetter Avro schema). A decoder message can quote
    the bad value, so ``detail`` writes a NUL as the four characters ``\\x00`` (PostgreSQL
    TEXT cannot store it) and a lone surrogate as ``\\udXXX`` (no UTF-8 for it)."""
    return {
        "dead_letter_id": f"{record.topic}/{record.partition}/{record.offset}",
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "kafka_timestamp": record.timestamp_ms,
        "key": record.key,
        "value": record.value,
        "stage": stage or REASONS.get(reason, "decode").split("|")[-1],
        "reason": reason,
        "detail": detail.replace("\x00", "\\x00").encode(
            "utf-8", "backslashreplace").decode("utf-8"),
        "schema_id": schema_id,
        "batch_id": batch_id,
        "failed_at": failed_at_ms if failed_at_ms is not None else int(time.time() * 1000),
    }


class EventDecoder:
    """Turns KafkaRecords into event dicts or dead letters.

    ``topics`` maps event kind (social, web, survey) to topic name. Avro values must be in
    Confluent wire format; values starting with ``{`` are read as JSON events and checked
    against the same schema. ``now_ms`` is the instant future timestamps are judged against:
    the micro-batch's recorded start, so that a re-run decides exactly as the first run did.
    """

    def __init__(self, registry: SchemaRegistry, topics: dict[str, str],
                 max_future_ms: int = DEFAULT_MAX_FUTURE_MS):
        self.codec = AvroCodec(registry)
        self.json_reader = JsonEventReader(self.codec)
        self.role_by_topic = {topic: role for role, topic in topics.items() if role != DEAD_LETTER}
        self.subject_by_topic = {topic: subject_for_role(role)
                                 for topic, role in self.role_by_topic.items()}
        self.max_future_ms = max_future_ms
        # E-mails and phones become keyed hashes right here, before anything stores or logs
        # them (docs/identity.md).
        self.pseudonymiser = Pseudonymiser()

    def decode(self, record: KafkaRecord, now_ms: int) -> dict:
        """The event (with ``_topic``, ``_partition``, ``_offset``, ``_role``, ``_schema_id``),
        or raises DecodeError."""
        role = self.role_by_topic[record.topic]
        value = record.value
        if not value:
            raise DecodeError("empty_value", "the record has no value (tombstone or empty)")
        first = value[0]
        if first == 0:
            event, schema_id = self.codec.decode(value, self.subject_by_topic[record.topic])
        elif first in (0x7B, 0x20, 0x0A, 0x0D, 0x09):  # '{' or leading whitespace
            event, schema_id = self.json_reader.read(value, self.subject_by_topic[record.topic])
        else:
            raise DecodeError("undecodable", "neither Confluent wire format nor a JSON object")
        try:
            validate_event(role, event, now_ms, self.max_future_ms)
        except DecodeError as exc:
            exc.schema_id = schema_id
            exc.stage = "validate"
            raise
        event["_topic"] = record.topic
        event["_partition"] = record.partition
        event["_offset"] = record.offset
        event["_role"] = role
        event["_schema_id"] = schema_id
        self.pseudonymiser.apply(event)
        return event


def pack_events(events: list[dict]) -> bytes:
    """How lists of dicts (events, links, table rows) cross a shuffle: one pickled value.
    Beam's generic coder encodes a dict field by field and costs ~4 s per 50k events on the
    local runner; one pickle.dumps of the list costs a few ms. Only our own DoFns read it."""
    return pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_events(blobs: Iterable[bytes]) -> list[dict]:
    return [event for blob in blobs for event in pickle.loads(blob)]


def bucket_of(event_id: str, buckets: int) -> int:
    """Stable bucket of an event id (the same in every process, unlike ``hash()``)."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


class DecodeBatchesFn(beam.DoFn):
    """Batches of KafkaRecord in; per batch, ``(bucket, packed events)`` out (see
    :func:`pack_events`), bucketed by event id for de-duplication; dead letters to the
    ``dead_letter`` output."""

    def __init__(self, registry: SchemaRegistry, topics: dict[str, str], now_ms: int,
                 buckets: int, batch_id: str | None = None,
                 max_future_ms: int = DEFAULT_MAX_FUTURE_MS):
        self.registry = registry
        self.topics = topics
        self.now_ms = now_ms
        self.buckets = buckets
        self.batch_id = batch_id
        self.max_future_ms = max_future_ms
        self._decoder = None
        self._counters: dict[str, Metrics.DelegatingCounter] = {}

    def _counter(self, name: str):
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter("cx360.decode", name)
        return counter

    def setup(self):
        self._decoder = EventDecoder(self.registry, self.topics, self.max_future_ms)

    def process(self, batch: bytes | list[KafkaRecord]) -> Iterator:
        batch = unpack_records(batch)
        decoder = self._decoder
        accepted: dict[str, int] = {}
        pending: dict[int, list[dict]] = {}
        buckets = self.buckets
        for record in batch:
            try:
                event = decoder.decode(record, self.now_ms)
            except DecodeError as exc:
                self._counter(f"dead_letters:{record.topic}:{exc.reason}").inc()
                yield pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                    record, exc.reason, exc.detail, stage=exc.stage, schema_id=exc.schema_id,
                    batch_id=self.batch_id, failed_at_ms=self.now_ms))
                continue
            except RegistryError as exc:
                # The registry itself failed (unreachable): not the record's fault. Raising
                # makes the runner retry the bundle instead of dead-lettering good data.
                raise RuntimeError(f"schema registry failed: {exc}") from exc
            accepted[record.topic] = accepted.get(record.topic, 0) + 1
            pending.setdefault(bucket_of(event["event_id"], buckets), []).append(event)
        for topic, count in accepted.items():
            self._counter(f"accepted:{topic}").inc(count)
        for bucket, events in pending.items():
            yield bucket, pack_events(events)


class DecodeEvents(beam.PTransform):
    """Batches of KafkaRecord -> {'events': (bucket, [event]), 'dead_letter': dead letter}."""

    def __init__(self, registry: SchemaRegistry, topics: dict[str, str], now_ms: int,
                 buckets: int = 16, batch_id: str | None = None,
                 max_future_ms: int = DEFAULT_MAX_FUTURE_MS):
        super().__init__()
        self.fn = DecodeBatchesFn(registry, topics, now_ms, buckets, batch_id, max_future_ms)

    def expand(self, batches):
        return batches | "DecodeAndValidate" >> beam.ParDo(self.fn).with_outputs(
            DEAD_LETTER, main="events")


def decode_all(decoder: EventDecoder, records: Iterable[KafkaRecord], now_ms: int
               ) -> tuple[list[dict], list[dict]]:
    """Plain-Python decode of many records: (events, dead letters)."""
    events, dead = [], []
    for record in records:
        try:
            events.append(decoder.decode(record, now_ms))
        except DecodeError as exc:
            dead.append(dead_letter(record, exc.reason, exc.detail, stage=exc.stage,
                                    schema_id=exc.schema_id,
                                    failed_at_ms=now_ms))
    return events, dead
