"""`cx360 health`: is the pipeline keeping up, is the data fresh, are dead letters spiking?

    cx360 health --max-lag 5000 --max-staleness 30m && echo healthy

Reads the warehouse read-only (ledger, de-duplication ledger, pipeline_health) and the
brokers' high watermarks (Fetch, never ListOffsets LATEST), prints one line per check and
exits 0 (ok), 1 (warn) or 2 (critical), for cron jobs and alerting. Checks:

* lag: high watermark minus the end of the offsets the warehouse holds, summed over the event
  topics' partitions;
* freshness: now minus the newest event_time in the warehouse, for the stalest event topic;
  (a streaming deployment's warehouse: position and newest Kafka record time from its
  per-interval pipeline_health rows, see transforms/stream_health.py)
* dead_letter_rate: dead letters / records of the batches recorded in --rate-window;
* pending_batches: batches pending longer than --max-pending-age (an interrupted run; warn).

DuckDB allows no reader while a writer holds the file: the command retries for
--lock-timeout seconds (`cx360 run` holds it only while it works on a batch), then reports
the warehouse check as warn.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from cx360.pipelines.cli import UserError
from cx360.pipelines.options import add_kafka_args, add_topic_args, kafka_config_from_args, \
    topics_from_args
from cx360.pipelines.run_cmd import add_warehouse_arg


def _duration(flag: str, text: str) -> float:
    from cx360.transforms.counts import parse_duration

    try:
        return float(parse_duration(text))
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _rate(flag: str, text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"{flag}: expected a fraction (0.05) or a percentage (5%)") from None
    if not 0 <= value <= 1:
        raise UserError(f"{flag}: must be between 0 and 1 (or 0% and 100%)")
    return value


def register(sub) -> None:
    parser = sub.add_parser(
        "health", help="check lag, freshness and dead letters; exit 0 ok, 1 warn, 2 critical",
        description="Check the pipeline's health against thresholds. Exit code: 0 ok, 1 warn, "
                    "2 critical (an unreachable broker or an unreadable warehouse included).")
    parser.add_argument("--warn-lag", type=int, default=1_000,
                        help="warn above this many records behind (default 1000)")
    parser.add_argument("--max-lag", type=int, default=10_000,
                        help="critical above this many records behind (default 10000)")
    parser.add_argument("--warn-staleness", default="15m",
                        help="warn when the newest event is older (default 15m)")
    parser.add_argument("--max-staleness", default="1h",
                        help="critical when the newest event is older (default 1h)")
    parser.add_argument("--warn-dead-letter-rate", default="1%",
                        help="warn above this share of dead letters (default 1%%)")
    parser.add_argument("--max-dead-letter-rate", default="5%",
                        help="critical above this share of dead letters (default 5%%)")
    parser.add_argument("--rate-window", default="1h",
                        help="dead-letter rate over the batches recorded this recently (1h)")
    parser.add_argument("--max-pending-age", default="10m",
                        help="warn when a batch has been pending longer (interrupted run; "
                             "default 10m)")
    parser.add_argument("--lock-timeout", type=float, default=10.0,
                        help="seconds to wait while a writer holds a DuckDB file (default 10)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    add_warehouse_arg(parser)
    add_topic_args(parser)
    add_kafka_args(parser)
    parser.set_defaults(handler=run)


def thresholds_from_args(args: argparse.Namespace):
    from cx360.pipelines.health import Thresholds

    t = Thresholds(
        warn_lag=args.warn_lag, max_lag=args.max_lag,
        warn_staleness_s=_duration("--warn-staleness", args.warn_staleness),
        max_staleness_s=_duration("--max-staleness", args.max_staleness),
        warn_dead_letter_rate=_rate("--warn-dead-letter-rate", args.warn_dead_letter_rate),
        max_dead_letter_rate=_rate("--max-dead-letter-rate", args.max_dead_letter_rate),
        rate_window_s=_duration("--rate-window", args.rate_window),
        max_pending_age_s=_duration("--max-pending-age", args.max_pending_age))
    if t.warn_lag > t.max_lag or t.warn_staleness_s > t.max_staleness_s \
            or t.warn_dead_letter_rate > t.max_dead_letter_rate:
        raise UserError("each --warn-* threshold must be at most its --max-* threshold")
    return t


def open_read_only(url: str, lock_timeout: float):
    """The warehouse opened read-only, retrying while a DuckDB writer holds the file; None if
    it stays locked."""
    from cx360.transforms.warehouse import WarehouseError, open_warehouse

    deadline = time.monotonic() + lock_timeout
    while True:
        try:
            return open_warehouse(url, read_only=True)
        except WarehouseError as exc:
            locked = "lock" in str(exc).lower()
            if not locked:
                raise UserError(str(exc)) from None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)


def collect(args: argparse.Namespace) -> list:
    from cx360.pipelines.health import (CRITICAL, WARN, Check, check_dead_letters,
                                        check_freshness, check_lag, check_pending,
                                        event_topics, lag_by_partition, ledger_ends,
                                        newest_event_times, recent_volume,
                                        streaming_progress)
    from cx360.transforms.kafka_io import KafkaUnavailable

    t = thresholds_from_args(args)
    topics = topics_from_args(args)
    kafka = kafka_config_from_args(args)
    warehouse = open_read_only(args.warehouse, args.lock_timeout)
    if warehouse is None:
        return [Check("warehouse", WARN, f"{args.warehouse} is held by a writer (a batch in "
                      f"progress?) for more than {args.lock_timeout:.0f} s; try again or raise "
                      "--lock-timeout")]
    try:  # read everything first: while this reader holds a DuckDB file, writers wait
        now_ms = int(time.time() * 1000)
        ends = ledger_ends(warehouse)
        newest = newest_event_times(warehouse)
        # A streaming deployment (cx360 stream) has no ledgers: its health rows say where it is.
        stream_ends, stream_newest = streaming_progress(warehouse)
        for tp, position in stream_ends.items():
            ends[tp] = max(ends.get(tp, 0), position)
        for tp, ms in stream_newest.items():
            newest[tp] = max(newest.get(tp, ms), ms)
        records_in, dead = recent_volume(warehouse, now_ms - int(t.rate_window_s * 1000),
                                         event_topics(topics))
        pending = [(b.batch_id, b.created_ms) for b in warehouse.batches("pending")]
    finally:
        warehouse.close()
    checks = []
    try:
        positions, watermarks = lag_by_partition(kafka, ends, topics)
        checks.append(check_lag(positions, watermarks, t))
    except KafkaUnavailable as exc:
        checks.append(Check("lag", CRITICAL, f"Kafka: {exc}"))
    checks.append(check_freshness(newest, event_topics(topics), now_ms, t))
    checks.append(check_dead_letters(records_in, dead, t))
    checks.append(check_pending(pending, now_ms, t))
    return checks


def run(args: argparse.Namespace) -> int:
    from cx360.pipelines.health import STATUS_NAMES, overall

    checks = collect(args)
    status = overall(checks)
    if args.json:
        print(json.dumps({"status": STATUS_NAMES[status], "exit_code": status,
                          "checks": [c.as_dict() for c in checks]}))
    else:
        for check in checks:
            print(f"{STATUS_NAMES[check.status]:<9}{check.name:<18}{check.message}")
        print(f"overall: {STATUS_NAMES[status]}")
    sys.stdout.flush()
    return status
