"""`cx360 generate`: a realistic, seeded stream of social, web and survey events into Kafka.

Records come from :mod:`cx360.pipelines.generator` in arrival order (with late, out-of-order,
duplicate, JSON-encoded and malformed records) and go to the three event topics; the truth
behind every record (true customer, expected dead-letter reason, and where it landed:
topic/partition/offset) goes to a JSONL file for later evaluation. docs/generator.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from datetime import datetime, timezone
from typing import IO, Iterable, Iterator

from cx360.pipelines.cli import UserError
from cx360.pipelines.options import (EVENT_ROLES, add_kafka_args, add_registry_args,
                                     add_topic_args, kafka_config_from_args, registry_from_args,
                                     topics_from_args)
from cx360.transforms.kafka_io import KafkaConfig, KafkaUnavailable

DEFAULT_TRUTH_FILE = os.path.join("data", "truth.jsonl")
#: Producer settings for bulk loads (the shared notes measured ~2x kafka-python's default).
PRODUCER_TUNING = dict(linger_ms=20, batch_size=256 * 1024, max_block_ms=15_000)


def register(sub) -> None:
    parser = sub.add_parser(
        "generate", help="produce a realistic, seeded stream of CX events to Kafka",
        description="Generate German/English social posts with brand replies, web-shop "
                    "sessions with orders, and NPS/CSAT/CES surveys for one population of "
                    "customers, with malformed, late, out-of-order and duplicate records, and "
                    "produce them to the event topics. The truth behind every record goes to "
                    "--truth-file. See docs/generator.md.")
    parser.add_argument("--events", type=int, default=50_000,
                        help="records in total, malformed and duplicates included "
                             "(default 50000)")
    parser.add_argument("--seed", type=int, default=42,
                        help="random seed: the same seed and options give the same bytes "
                             "(default 42)")
    parser.add_argument("--start", default=None,
                        help="start of the period as ISO-8601 (UTC unless an offset is given); "
                             "default: now minus --duration, floored to the hour")
    parser.add_argument("--duration", default="48h",
                        help="length of the period, e.g. 48h, 90m, 7d (default 48h)")
    parser.add_argument("--malformed", type=float, default=0.01,
                        help="fraction of malformed records, every dead-letter reason "
                             "(default 0.01)")
    parser.add_argument("--late", type=float, default=0.02,
                        help="fraction of valid events arriving 1-6 hours late (default 0.02)")
    parser.add_argument("--duplicates", type=float, default=0.01,
                        help="fraction of exact re-sends of a recent record (default 0.01)")
    parser.add_argument("--json-fraction", type=float, default=0.02,
                        help="fraction of valid events sent as JSON instead of Avro "
                             "(default 0.02)")
    parser.add_argument("--jitter", default="20s",
                        help="mean arrival delay of on-time events, which puts them out of "
                             "order (default 20s)")
    parser.add_argument("--truth-file", default=DEFAULT_TRUTH_FILE,
                        help=f"JSONL file with the truth of every record (default "
                             f"{DEFAULT_TRUTH_FILE}); '-' for none")
    parser.add_argument("--dry-run", action="store_true",
                        help="generate (and write the truth file) without producing")
    add_topic_args(parser)
    add_kafka_args(parser)
    add_registry_args(parser)
    parser.set_defaults(handler=run)


# -- options ---------------------------------------------------------------------------------
def parse_start_ms(text: str) -> int:
    from cx360.schemas.codec import parse_timestamp_ms

    try:
        return parse_timestamp_ms(text)
    except ValueError:
        raise UserError(f"--start {text!r} is not an ISO-8601 timestamp "
                        "(e.g. 2026-11-20T00:00:00Z)") from None


def build_config(args: argparse.Namespace, now_ms: int):
    """GeneratorConfig from the command line; UserError for values out of range."""
    from cx360.pipelines.generator import GeneratorConfig
    from cx360.transforms.counts import parse_duration

    if args.events < 0:
        raise UserError("--events must not be negative")
    for flag, value in (("--malformed", args.malformed), ("--late", args.late),
                        ("--duplicates", args.duplicates), ("--json-fraction",
                                                            args.json_fraction)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} must be a fraction between 0 and 1, got {value}")
    if args.malformed + args.duplicates > 1.0:
        raise UserError("--malformed plus --duplicates must not exceed 1")
    try:
        duration_s = parse_duration(args.duration)
        jitter_s = parse_duration(args.jitter) if args.jitter.strip() not in ("0", "0s") else 0
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.start:
        start_ms = parse_start_ms(args.start)
    else:
        start_ms = now_ms - duration_s * 1000
        start_ms -= start_ms % 3_600_000
    try:
        return GeneratorConfig(seed=args.seed, events=args.events, start_ms=start_ms,
                               duration_s=duration_s, malformed=args.malformed, late=args.late,
                               duplicates=args.duplicates, json=args.json_fraction,
                               jitter_s=float(jitter_s), now_ms=now_ms)
    except ValueError as exc:
        raise UserError(str(exc)) from None


# -- Kafka -----------------------------------------------------------------------------------
def ensure_topics(config: KafkaConfig, names: Iterable[str], timeout_s: float = 5.0) -> None:
    """Raise KafkaUnavailable unless the cluster is reachable and every topic exists."""
    from cx360.transforms.kafka_io import check_reachable, list_partitions

    check_reachable(config)
    list_partitions(config, sorted(set(names)), timeout_s=timeout_s)


def _new_counts(topics: dict[str, str]) -> dict:
    return {"total": 0, "sent": 0, "errors": 0,
            "by_topic": {topics[r]: 0 for r in EVENT_ROLES},
            "by_role": dict.fromkeys(EVENT_ROLES, 0),
            "valid": 0, "duplicates": 0, "malformed": 0, "late": 0, "json": 0,
            "malformed_by_reason": {}}


def _count(counts: dict, topic: str, record) -> None:
    truth = record.truth
    counts["total"] += 1
    counts["by_topic"][topic] = counts["by_topic"].get(topic, 0) + 1
    counts["by_role"][record.role] += 1
    kind = truth["kind"]
    if kind == "valid":
        counts["valid"] += 1
        counts["late"] += bool(truth["late"])
        counts["json"] += truth.get("encoding") == "json"
    elif kind == "duplicate":
        counts["duplicates"] += 1
    else:
        counts["malformed"] += 1
        reason = truth["expected_reason"]
        by_reason = counts["malformed_by_reason"]
        by_reason[reason] = by_reason.get(reason, 0) + 1


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _truth_line(truth: dict, tail: dict | None = None) -> str:
    """One JSON line of ``truth`` with ``tail`` (where it landed) merged in."""
    return _JSON(dict(truth, **tail) if tail else truth) + "\n"


def produce_generated(config: KafkaConfig, topics: dict[str, str], records: Iterable,
                      truth_out: IO[str] | None = None, flush_timeout_s: float = 120.0) -> dict:
    """Send generated records to ``topics`` (role -> topic name); returns counts.

    Counts: ``total`` records handed to the producer, ``sent`` acknowledged by the broker,
    ``errors`` failed or unacknowledged, ``by_topic``, ``by_role``, ``valid``, ``duplicates``,
    ``malformed``, ``malformed_by_reason``, ``late`` and ``json``. With ``truth_out``, each
    record's truth is written as one JSON line in send order once the broker has acknowledged
    it, with ``topic``, ``partition`` and ``offset`` added (``error`` instead when it failed).
    Raises KafkaUnavailable if the cluster is unreachable or a topic does not exist.
    """
    from kafka.errors import KafkaError

    from cx360.transforms.kafka_io import producer

    missing = [role for role in EVENT_ROLES if role not in topics]
    if missing:
        raise ValueError(f"no topic given for {', '.join(missing)}")
    ensure_topics(config, (topics[r] for r in EVENT_ROLES))
    kafka_producer = producer(config, **PRODUCER_TUNING)
    counts = _new_counts(topics)
    outcome = {"sent": 0, "errors": 0}
    pending: deque = deque()


    # (truth, future) per record in send order; the finished head of the queue is counted
    # and written. Polling the futures costs less than a callback per record.
    def drain(everything: bool = False):
        while pending and (everything or pending[0][1].is_done):
            truth, future = pending.popleft()
            if future.is_done and future.exception is None:
                meta = future.value
                outcome["sent"] += 1
                tail = {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}
            else:
                outcome["errors"] += 1
                error = future.exception if future.is_done else \
                    "not acknowledged before the flush timeout"
                tail = {"error": f"{type(error).__name__}: {error}" if future.is_done
                        else error}
            if truth_out is not None:
                truth_out.write(_truth_line(truth, tail))

    try:
        for record in records:
            topic = topics[record.role]
            try:
                future = kafka_producer.send(topic, key=record.key, value=record.value)
            except KafkaError as exc:
                raise KafkaUnavailable(f"cannot produce to {topic} on "
                                       f"{config.bootstrap_servers}: {exc}") from None
            _count(counts, topic, record)
            pending.append((record.truth, future))
            if len(pending) > 4096 or pending[0][1].is_done:
                drain()
        try:
            kafka_producer.flush(timeout=flush_timeout_s)
        except KafkaError:
            pass  # what was not acknowledged is counted as an error below
        drain(everything=True)
    finally:
        kafka_producer.close(timeout=10)
    counts["sent"], counts["errors"] = outcome["sent"], outcome["errors"]
    return counts


def write_truth(records: Iterable, truth_out: IO[str] | None, topics: dict[str, str]) -> dict:
    """Dry run: counts (as produce_generated) and the truth file, without Kafka."""
    counts = _new_counts(topics)
    for record in records:
        _count(counts, topics[record.role], record)
        if truth_out is not None:
            truth_out.write(_truth_line(record.truth))
    return counts


# -- command ---------------------------------------------------------------------------------
def _progress(records: Iterable, total: int, stream=sys.stderr) -> Iterator:
    """Pass records through, drawing a one-line progress bar on ``stream``."""
    started = last = time.monotonic()
    done = 0
    for done, record in enumerate(records, 1):
        yield record
        now = time.monotonic()
        if now - last >= 0.25:
            last = now
            filled = int(30 * done / total) if total else 30
            stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} "
                         f"({done / max(now - started, 1e-9):,.0f}/s)")
            stream.flush()
    stream.write("\r" + " " * 72 + "\r")
    stream.flush()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_summary(counts: dict, config, elapsed: float, truth_file: str | None,
                  bootstrap: str | None, out=sys.stdout) -> None:
    total = counts["total"]
    rate = total / elapsed if elapsed > 0 else 0.0
    target = f" to {bootstrap}" if bootstrap else " (dry run: nothing produced)"
    print(f"generated {total:,} records{target} in {elapsed:.1f} s ({rate:,.0f} records/s)",
          file=out)
    width = max(len(t) for t in counts["by_topic"]) if counts["by_topic"] else 5
    for topic, n in counts["by_topic"].items():
        print(f"  {topic:<{width}}  {n:>9,}", file=out)
    print(f"valid {counts['valid']:,} (late {counts['late']:,}, JSON-encoded "
          f"{counts['json']:,}), duplicates {counts['duplicates']:,}, "
          f"malformed {counts['malformed']:,}", file=out)
    if counts["malformed_by_reason"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in
                            sorted(counts["malformed_by_reason"].items()))
        print(f"  malformed by expected dead-letter reason: {reasons}", file=out)
    print(f"period {_iso(config.start_ms)} .. {_iso(config.end_ms)}, seed {config.seed}"
          + (f"; truth in {truth_file}" if truth_file else ""), file=out)
    if bootstrap and counts["errors"]:
        print(f"{counts['errors']:,} records failed to send (see 'error' in the truth file)",
              file=out)


def run(args: argparse.Namespace) -> int:
    from cx360.pipelines.generator import generate
    from cx360.schemas.codec import AvroCodec
    from cx360.schemas.registry import RegistryError

    now_ms = int(time.time() * 1000)
    config = build_config(args, now_ms)
    topics = topics_from_args(args)
    kafka = None if args.dry_run else kafka_config_from_args(args)
    codec = AvroCodec(registry_from_args(args))
    try:
        from cx360.schemas.registry import SUBJECT_BY_ROLE

        for role in EVENT_ROLES:
            codec.reader_schema(SUBJECT_BY_ROLE[role])
    except RegistryError as exc:
        raise UserError(f"schema registry: {exc}") from None
    if config.end_ms > now_ms + 15 * 60_000:
        print(f"cx360 generate: note: the period ends at {_iso(config.end_ms)}, in the future; "
              "a pipeline run now dead-letters later events as future_timestamp",
              file=sys.stderr)
    if kafka is not None:
        try:
            ensure_topics(kafka, (topics[r] for r in EVENT_ROLES))
        except KafkaUnavailable as exc:
            raise UserError(str(exc)) from None

    truth_file = None if args.truth_file in ("-", "") else args.truth_file
    truth_out = None
    if truth_file:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(truth_file)), exist_ok=True)
            truth_out = open(truth_file, "w", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write the truth file {truth_file}: {exc}") from None
    started = time.monotonic()
    records = generate(config, codec)
    if sys.stderr.isatty():
        records = _progress(records, config.events)
    try:
        if kafka is None:
            counts = write_truth(records, truth_out, topics)
        else:
            counts = produce_generated(kafka, topics, records, truth_out)
    except KafkaUnavailable as exc:
        raise UserError(str(exc)) from None
    finally:
        if truth_out is not None:
            truth_out.close()
    elapsed = time.monotonic() - started
    print_summary(counts, config, elapsed, truth_file,
                  None if kafka is None else kafka.bootstrap_servers)
    if kafka is not None and counts["errors"]:
        print(f"cx360 generate: error: {counts['errors']:,} of {counts['total']:,} records "
              "failed to send", file=sys.stderr)
        return 1
    return 0
