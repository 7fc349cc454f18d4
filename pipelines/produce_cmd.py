"""`cx360 produce`: validate a file of JSON events (one per line) and produce them Avro-encoded.

The way a user feeds their own data: each line is read exactly as the pipeline reads a JSON
event (checked against the topic's Avro schema, then the semantic rules), so what passes here
is accepted by the pipeline. Valid lines are written in Confluent wire format with the
registered schema id; invalid ones are reported as ``line N: reason: detail`` and not sent.
Exit status: 0 all lines produced, 1 some lines rejected (or not acknowledged), 2 usage error.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import IO

from cx360.pipelines.cli import UserError
from cx360.pipelines.options import (EVENT_ROLES, add_kafka_args, add_registry_args,
                                     add_topic_args, kafka_config_from_args, registry_from_args,
                                     topics_from_args)
from cx360.transforms.kafka_io import KafkaUnavailable


def register(sub) -> None:
    parser = sub.add_parser(
        "produce", help="validate JSON events from a file and produce them Avro-encoded",
        description=__doc__.split("\n\n")[0] + " Lines are JSON objects with the fields of "
        "the event schema (docs/schemas.md); event_time as epoch milliseconds or ISO-8601.")
    parser.add_argument("--topic", required=True, help="topic to produce to")
    parser.add_argument("--file", required=True, help="JSONL file, '-' for standard input")
    parser.add_argument("--kind", choices=EVENT_ROLES,
                        help="event kind of the lines; needed unless --topic is the "
                             "--social-topic, --web-topic or --survey-topic")
    parser.add_argument("--key-field", default="event_id",
                        help="field whose value is the Kafka key (default event_id)")
    parser.add_argument("--max-future", default="15m",
                        help="allowed clock skew for event_time (default 15m, as the pipeline)")
    parser.add_argument("--dry-run", action="store_true", help="validate only, produce nothing")
    add_topic_args(parser)
    add_kafka_args(parser)
    add_registry_args(parser)
    parser.set_defaults(handler=run)


def resolve_kind(topic: str, kind: str | None, topics: dict[str, str]) -> str:
    """The event kind of ``topic``: from --kind, else from the configured topic names."""
    if topic == topics.get("dead_letter"):
        raise UserError(f"{topic} is the dead-letter topic; produce events to an event topic")
    inferred = next((role for role in EVENT_ROLES if topics.get(role) == topic), None)
    if kind and inferred and kind != inferred:
        raise UserError(f"--kind {kind} does not match {topic}, which is the {inferred} topic")
    if kind or inferred:
        return kind or inferred
    raise UserError(f"cannot tell which kind of event {topic!r} holds: give --kind "
                    f"({'|'.join(EVENT_ROLES)}) or name it with --social-topic/--web-topic/"
                    "--survey-topic")


class LineProducer:
    """Validates JSON lines like the pipeline and encodes the valid ones in wire format."""

    def __init__(self, codec, role: str, key_field: str, max_future_ms: int):
        from cx360.schemas.codec import JsonEventReader
        from cx360.schemas.registry import SUBJECT_BY_ROLE

        self.codec = codec
        self.reader = JsonEventReader(codec)
        self.role = role
        self.subject = SUBJECT_BY_ROLE[role]
        self.key_field = key_field
        self.max_future_ms = max_future_ms

    def encode(self, line: bytes, now_ms: int) -> tuple[bytes, bytes, list[str]]:
        """(key, value, fields dropped because the schema lacks them); raises DecodeError."""
        from cx360.schemas.codec import DecodeError
        from cx360.transforms.validate import validate_event

        record, _ = self.reader.read(line, self.subject)
        validate_event(self.role, record, now_ms, self.max_future_ms)
        extra = record.pop("_extra", None) or {}
        key = record.get(self.key_field, extra.get(self.key_field))
        if key is None or (isinstance(key, str) and not key.strip()):
            raise DecodeError("missing_field", f"key field {self.key_field!r} is empty")
        try:
            value = self.codec.encode(self.subject, record)
        except (ValueError, TypeError, AttributeError) as exc:
            raise DecodeError("schema_violation", f"cannot encode: {exc}") from None
        return str(key).encode("utf-8"), value, sorted(extra)


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    from cx360.schemas.codec import AvroCodec, DecodeError
    from cx360.schemas.registry import SUBJECT_BY_ROLE, RegistryError
    from cx360.transforms.counts import parse_duration

    topics = topics_from_args(args)
    role = resolve_kind(args.topic, args.kind, topics)
    try:
        max_future_ms = parse_duration(args.max_future) * 1000
    except ValueError as exc:
        raise UserError(str(exc)) from None
    codec = AvroCodec(registry_from_args(args))
    try:
        codec.reader_schema(SUBJECT_BY_ROLE[role])
    except RegistryError as exc:
        raise UserError(f"schema registry: {exc}") from None
    lines = LineProducer(codec, role, args.key_field, max_future_ms)

    kafka_producer = None
    if not args.dry_run:
        from cx360.pipelines.generate_cmd import PRODUCER_TUNING, ensure_topics
        from cx360.transforms.kafka_io import producer

        kafka = kafka_config_from_args(args)
        try:
            ensure_topics(kafka, [args.topic])
            kafka_producer = producer(kafka, **PRODUCER_TUNING)
        except KafkaUnavailable as exc:
            raise UserError(str(exc)) from None

    source = _open(args.file)
    accepted, rejected, failures = 0, {}, []
    try:
        for number, raw in enumerate(source, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                key, value, dropped = lines.encode(line, int(time.time() * 1000))
            except DecodeError as exc:
                rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
                print(f"line {number}: {exc.reason}: {exc.detail}", file=sys.stderr)
                continue
            if dropped:
                print(f"line {number}: warning: not in the {role} schema, not written: "
                      f"{', '.join(dropped)}", file=sys.stderr)
            accepted += 1
            if kafka_producer is not None:
                future = kafka_producer.send(args.topic, key=key, value=value)
                future.add_errback(lambda exc, n=number: failures.append((n, exc)))
        if kafka_producer is not None:
            kafka_producer.flush(timeout=60)
    except Exception as exc:
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            raise UserError(f"producing to {args.topic} failed: {exc}") from None
        raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if kafka_producer is not None:
            kafka_producer.close(timeout=10)
    for number, exc in failures:
        print(f"line {number}: not produced: {type(exc).__name__}: {exc}", file=sys.stderr)
    total_rejected = sum(rejected.values())
    by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(rejected.items()))
    verb = "valid" if args.dry_run else "produced"
    produced = accepted - len(failures)
    print(f"{verb} {produced}, rejected {total_rejected}" + (f" ({by_reason})" if by_reason else "")
          + (f", failed to send {len(failures)}" if failures else "")
          + (" [dry run: nothing produced]" if args.dry_run else f" -> {args.topic}"))
    return 1 if total_rejected or failures else 0
