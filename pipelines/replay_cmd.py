"""`cx360 replay-dead-letters`: re-process dead letters once their cause is fixed.

    cx360 replay-dead-letters --schema-registry schemas/team   # after registering a schema

Reads the dead-letter topic (DeadLetter Avro envelopes with the original key and value bytes
and their topic/partition/offset) and runs the original records through the same
decode/validate/de-duplicate/KPI logic as `cx360 run` (``ProcessEvents``), as one recorded
batch of the micro-batch ledger whose ranges are the dead-letter topic's own offsets:

* what is accepted now goes into the KPI tables, and its ``dead_letters`` row is marked
  ``resolution = 'replayed'`` (with ``replayed_at`` and ``replay_batch_id``), in the batch's
  one transaction;
* what fails again stays a dead letter (its row updated with the current reason) and is not
  produced to the dead-letter topic again;
* replayed = accepted now + still dead, per original topic (exit 3 if not);
* the dead-letter offsets replayed are recorded in the ledger, so running the command again
  reads only newer dead letters; ``--from earliest`` re-reads the whole topic (after a second
  fix), skipping every dead letter already resolved, so nothing is ever counted twice.
  Copies of one dead letter (it is produced at least once) are replayed once.

A replay batch interrupted by a crash stays pending and is re-run by the next replay with
exactly its ranges and clock; `cx360 run` leaves replay batches alone.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time

from cx360.pipelines.cli import UserError
from cx360.pipelines.options import (add_kafka_args, add_registry_args, add_topic_args,
                                     topics_from_args)
from cx360.pipelines.run_cmd import add_sliding_arg, add_warehouse_arg


def register(sub) -> None:
    parser = sub.add_parser(
        "replay-dead-letters", help="re-process dead letters after their cause is fixed",
        description="Re-process the dead-letter topic's records through the pipeline's "
                    "decode/validate/KPI logic as one recorded batch; what is accepted now "
                    "counts (once), the rest stays dead.")
    parser.add_argument("--from", dest="start_from", choices=["new", "earliest"],
                        default="new",
                        help="new (default): dead letters not replayed before; earliest: the "
                             "whole dead-letter topic, skipping resolved dead letters")
    parser.add_argument("--windows", default="1h,1d",
                        help="window sizes, as for `cx360 run` (default 1h,1d)")
    add_sliding_arg(parser)
    parser.add_argument("--max-future", default="15m",
                        help="allowed clock skew, as for `cx360 run` (default 15m)")
    parser.add_argument("--brands", default=os.environ.get("CX360_BRANDS"),
                        help="JSON file of brands (default: the demo brands)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_warehouse_arg(parser)
    add_topic_args(parser)
    add_kafka_args(parser)
    add_registry_args(parser)
    # What `cx360 run`'s configuration needs and replay does not offer.
    parser.set_defaults(handler=run, group_id="cx360", max_batch_records=None,
                        runner="FnApiRunner", beam_option=[])


def _ms(value) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp() * 1000)
    return int(value)


def read_envelopes(kafka, registry, ranges) -> list[dict]:
    """Decoded DeadLetter envelopes of the given dead-letter topic ranges, in offset order."""
    from kafka import TopicPartition

    from cx360.schemas.codec import AvroCodec, DecodeError
    from cx360.schemas.registry import DEAD_LETTER
    from cx360.transforms.kafka_io import KafkaUnavailable, consumer

    codec = AvroCodec(registry)
    out = []
    kafka_consumer = consumer(kafka, fetch_max_wait_ms=50)
    try:
        for r in ranges:
            tp = TopicPartition(r.topic, r.partition)
            kafka_consumer.assign([tp])
            kafka_consumer.seek(tp, r.start)
            position, deadline = r.start, time.monotonic() + 60
            while position < r.stop:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"no data from {r.topic}/{r.partition} at offset "
                                           f"{position} (range ends at {r.stop})")
                records = kafka_consumer.poll(timeout_ms=200).get(tp, [])
                for record in records:
                    if record.offset >= r.stop:
                        position = r.stop
                        break
                    position = record.offset + 1
                    try:
                        envelope, _ = codec.decode(record.value or b"", DEAD_LETTER)
                    except DecodeError:
                        continue  # not a DeadLetter envelope: nothing to replay
                    out.append(envelope)
                if not records and kafka_consumer.position(tp) >= r.stop:
                    break  # only gaps (compaction, transaction markers) were left
    finally:
        kafka_consumer.close()
    return out


def replayable(envelopes: list[dict], topics: dict[str, str], resolved: set[str]
               ) -> tuple[list[dict], int]:
    """Envelopes to replay: of an event topic, not resolved, first copy of each id. Returns
    (envelopes, copies skipped)."""
    event_topics = {t for role, t in topics.items() if role != "dead_letter"}
    seen, out, skipped = set(), [], 0
    for env in envelopes:
        dl_id = env["dead_letter_id"]
        if env["topic"] not in event_topics or dl_id in resolved or dl_id in seen:
            skipped += 1
            continue
        seen.add(dl_id)
        out.append(env)
    return out, skipped


def _resolved_ids(warehouse) -> set[str]:
    try:
        return {r[0] for r in warehouse.query(
            "SELECT dead_letter_id FROM dead_letters WHERE resolution IS NOT NULL")}
    except Exception:  # no dead_letters table yet
        return set()


def plan(config, warehouse, start_from: str):
    """Ranges of the dead-letter topic to replay now."""
    from cx360.transforms.kafka_io import (PartitionRange, beginning_offsets, high_watermarks,
                                           list_partitions)
    from cx360.transforms.warehouse.base import subtract_intervals

    dl_topic = config.topics["dead_letter"]
    tps = [(dl_topic, p) for p in list_partitions(config.kafka, [dl_topic])[dl_topic]]
    earliest = beginning_offsets(config.kafka, tps)
    ends = high_watermarks(config.kafka, earliest)
    claimed = warehouse.claimed_intervals()
    ranges = []
    for tp in tps:
        taken = [] if start_from == "earliest" else claimed.get(tp, [])
        for a, b in subtract_intervals(earliest[tp], ends[tp], taken):
            ranges.append(PartitionRange(tp[0], tp[1], a, b))
    return ranges


def run_replay_batch(config, batch, envelopes: list[dict]) -> dict:
    """Run ProcessEvents over the envelopes' original records; one transactional write."""
    import apache_beam as beam

    from cx360.pipelines.job import TABLES_WRITTEN, ProcessEvents, local_options
    from cx360.pipelines.microbatch import _by_topic, _counters, job_settings
    from cx360.transforms.identity import redact_dead_letter
    from cx360.transforms.kafka_io import KafkaRecord
    from cx360.transforms.warehouse.sink import WriteMicroBatch
    from cx360.transforms.warehouse.spec import DEAD_LETTERS

    records = [KafkaRecord(e["topic"], e["partition"], e["offset"], _ms(e["kafka_timestamp"]),
                           e["key"], e["value"]) for e in envelopes]
    chunks = [records[i:i + config.read_batch_size]
              for i in range(0, len(records), config.read_batch_size)]
    event_topics = {k: v for k, v in config.topics.items() if k != "dead_letter"}
    settings = job_settings(config, batch, topics=event_topics)
    # The envelopes carry the original bytes: the warehouse copy is redacted like every other
    # dead-letter row (no raw e-mail or phone in any table).
    resolved_rows = [redact_dead_letter(dict(
        e, kafka_timestamp=_ms(e["kafka_timestamp"]), failed_at=_ms(e["failed_at"]),
        resolution="replayed", replayed_at=batch.created_ms, replay_batch_id=batch.batch_id))
        for e in envelopes]

    def resolve(element):
        _, grouped = element
        if not grouped["dead"]:
            for row in grouped["replayed"]:
                yield DEAD_LETTERS.name, [row]

    started = time.monotonic()
    pipeline = beam.Pipeline(options=local_options())
    batches = pipeline | "DeadLetterRecords" >> beam.Create(chunks)
    out = batches | "Process" >> ProcessEvents(settings)
    replayed = pipeline | "Replayed" >> beam.Create(
        [(row["dead_letter_id"], row) for row in resolved_rows])
    still_dead = out["dead_letters"] | "StillDead" >> beam.Map(
        lambda dead: (dead["dead_letter_id"], True))
    resolutions = ({"replayed": replayed, "dead": still_dead}
                   | "JoinOutcome" >> beam.CoGroupByKey()
                   | "ResolvedRows" >> beam.FlatMap(resolve))
    _ = ((out["parts"], resolutions) | "AllParts" >> beam.Flatten()
         | "WriteWarehouse" >> WriteMicroBatch(config.warehouse_url, batch.batch_id,
                                               TABLES_WRITTEN))
    result = pipeline.run()
    result.wait_until_finish()
    counters = _counters(result)
    dead: dict[str, dict[str, int]] = {}
    for name, value in _by_topic(counters, "cx360.decode/dead_letters:").items():
        topic, reason = name.rsplit(":", 1)
        dead.setdefault(topic, {})[reason] = dead.get(topic, {}).get(reason, 0) + value
    replayed_by_topic: dict[str, int] = {}
    for e in envelopes:
        replayed_by_topic[e["topic"]] = replayed_by_topic.get(e["topic"], 0) + 1
    accepted = _by_topic(counters, "cx360.decode/accepted:")
    dups = _by_topic(counters, "cx360.dedupe/duplicates:")
    per_topic = {}
    for topic, n in sorted(replayed_by_topic.items()):
        still = sum(dead.get(topic, {}).values())
        per_topic[topic] = {"replayed": n, "accepted": accepted.get(topic, 0),
                            "duplicates": dups.get(topic, 0), "still_dead": still,
                            "still_dead_by_reason": dict(sorted(dead.get(topic, {}).items())),
                            "reconciled": n == accepted.get(topic, 0) + still}
    return {"topics": per_topic,
            "already_applied": counters.get("cx360.write/batches_already_applied", 0) > 0,
            "seconds": round(time.monotonic() - started, 2)}


def replay(config, start_from: str = "new") -> dict:
    """Recover interrupted replay batches, then replay what is new; returns the summary."""
    from cx360.pipelines.microbatch import is_replay_batch
    from cx360.transforms.warehouse import TABLES, Batch, open_warehouse
    from cx360.pipelines.job import TABLES_WRITTEN

    warehouse = open_warehouse(config.warehouse_url)
    try:
        warehouse.ensure_tables(TABLES[name] for name in TABLES_WRITTEN)
        warehouse.ensure_views()
        todo = [b for b in warehouse.batches("pending") if is_replay_batch(b)]
        for batch in warehouse.batches("applied"):
            if is_replay_batch(batch):
                warehouse.set_batch_status(batch.batch_id, "committed")
        ranges = plan(config, warehouse, start_from)
        if ranges:
            created = int(time.time() * 1000)
            batch = Batch(f"replay-{created}-{time.monotonic_ns() % 10**8:08d}", created,
                          "pending", ranges)
            warehouse.record_batch(batch)
            todo.append(batch)
    finally:
        warehouse.close()
    summary = {"batches": [], "topics": {}, "dead_letters_read": 0, "skipped": 0}
    for batch in todo:
        envelopes = read_envelopes(config.kafka, config.registry, batch.ranges)
        warehouse = open_warehouse(config.warehouse_url)
        try:
            resolved = _resolved_ids(warehouse)
        finally:
            warehouse.close()
        chosen, skipped = replayable(envelopes, config.topics, resolved)
        summary["dead_letters_read"] += len(envelopes)
        summary["skipped"] += skipped
        if chosen:
            outcome = run_replay_batch(config, batch, chosen)
            for topic, v in outcome["topics"].items():
                acc = summary["topics"].setdefault(topic, {
                    "replayed": 0, "accepted": 0, "duplicates": 0, "still_dead": 0,
                    "still_dead_by_reason": {}})
                for k in ("replayed", "accepted", "duplicates", "still_dead"):
                    acc[k] += v[k]
                for reason, n in v["still_dead_by_reason"].items():
                    acc["still_dead_by_reason"][reason] = acc["still_dead_by_reason"].get(
                        reason, 0) + n
        warehouse = open_warehouse(config.warehouse_url)
        try:
            status = {b.batch_id: b.status for b in warehouse.batches()}[batch.batch_id]
            if status == "pending" and chosen:
                raise RuntimeError(f"replay batch {batch.batch_id} finished but was not applied")
            warehouse.set_batch_status(batch.batch_id, "committed")
        finally:
            warehouse.close()
        summary["batches"].append(batch.batch_id)
    for v in summary["topics"].values():
        v["reconciled"] = v["replayed"] == v["accepted"] + v["still_dead"]
    summary["replayed"] = sum(v["replayed"] for v in summary["topics"].values())
    summary["accepted"] = sum(v["accepted"] for v in summary["topics"].values())
    summary["still_dead"] = sum(v["still_dead"] for v in summary["topics"].values())
    summary["reconciled"] = all(v["reconciled"] for v in summary["topics"].values())
    return summary


def print_summary(summary: dict, out=sys.stdout) -> None:
    print(f"dead letters read: {summary['dead_letters_read']} (skipped: {summary['skipped']} "
          "resolved before, duplicate copies or not of an event topic)", file=out)
    print(f"{'topic':<28}{'replayed':>9}{'accepted':>10}{'dupes':>8}{'still dead':>12}", file=out)
    for topic, v in summary["topics"].items():
        print(f"{topic:<28}{v['replayed']:>9}{v['accepted']:>10}{v['duplicates']:>8}"
              f"{v['still_dead']:>12}", file=out)
        for reason, n in v["still_dead_by_reason"].items():
            print(f"  still dead: {reason:<22}{n:>7}", file=out)
    print(f"reconciliation (replayed = accepted + still dead): "
          f"{summary['replayed']} = {summary['accepted']} + {summary['still_dead']} "
          + ("OK" if summary["reconciled"] else "MISMATCH"), file=out)


def run(args: argparse.Namespace) -> int:
    import logging

    from cx360.pipelines.run_cmd import build_run_config
    from cx360.schemas.registry import RegistryError
    from cx360.transforms.kafka_io import KafkaUnavailable

    if "dead_letter" not in topics_from_args(args):
        raise UserError("a dead-letter topic is needed")
    args.start_from, mode = [], args.start_from
    config = build_run_config(args)
    try:
        summary = replay(config, mode)
    except KafkaUnavailable as exc:
        raise UserError(str(exc)) from None
    except RegistryError as exc:
        raise UserError(f"schema registry: {exc}") from None
    logging.getLogger("cx360.replay").info("dead letters replayed", extra={"cx360": {
        "event": "dead_letters_replayed", **{k: summary[k] for k in (
            "batches", "replayed", "accepted", "still_dead", "reconciled", "topics")}}})
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    return 0 if summary["reconciled"] else 3
