"""`cx360 run`: the pipeline. ``--once`` processes everything available and exits; without it,
micro-batches run one after another until SIGINT/SIGTERM, which finish the current batch."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from cx360.pipelines.cli import UserError
from cx360.transforms.warehouse import display_url
from cx360.pipelines.options import (add_kafka_args, add_registry_args, add_topic_args,
                                     kafka_config_from_args, registry_from_args,
                                     topics_from_args)

DEFAULT_WAREHOUSE = "duckdb:data/cx360.duckdb"
#: Default cap of offsets per partition and batch, per process working on a batch.
DEFAULT_BATCH_RECORDS = 10_000
RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "DataflowRunner",
           "FlinkRunner", "PortableRunner")


def add_warehouse_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", default=os.environ.get("CX360_WAREHOUSE", DEFAULT_WAREHOUSE),
                        help=f"warehouse URL (env CX360_WAREHOUSE; default {DEFAULT_WAREHOUSE})")


def add_sliding_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sliding", default="",
                        help="sliding KPI windows SIZE/PERIOD, comma-separated, e.g. 1d/1h "
                             "(24-hour windows every hour) for the social and survey KPIs, "
                             "in tables of their own (default: none)")


def register(sub) -> None:
    parser = sub.add_parser("run", help="run the pipeline (--once: one batch and exit)")
    parser.add_argument("--once", action="store_true",
                        help="process everything available now, then exit")
    parser.add_argument("--from", dest="start_from", action="append", default=[],
                        metavar="[TOPIC=]committed|earliest|ISO-TIME",
                        help="where to start reading: after what the warehouse already holds "
                             "(committed, the default), the earliest offset, or the first record "
                             "whose Kafka timestamp is at or after an ISO-8601 time; per topic "
                             "with TOPIC=..., repeatable. Offsets already in the warehouse are "
                             "never counted twice")
    parser.add_argument("--group-id", default="cx360",
                        help="consumer group the offsets are committed under (for lag tools)")
    parser.add_argument("--windows", default="1h,1d",
                        help="window sizes, comma-separated (default 1h,1d)")
    add_sliding_arg(parser)
    parser.add_argument("--max-future", default="15m",
                        help="allowed clock skew: events stamped further ahead are dead letters")
    parser.add_argument("--max-batch-records", type=int, default=None,
                        help="at most this many offsets per partition and batch (default "
                             "10000 per process: 20000 with the two processes of the local "
                             "parallel mode): bounds memory; --once runs batches until "
                             "caught up")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="continuous mode: seconds between batches when idle (default 5)")
    parser.add_argument("--brands", default=os.environ.get("CX360_BRANDS"),
                        help="JSON file of brands and competitive sets for share of voice "
                             "(default: the demo brands shipped with cx360)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="local runner: worker processes per batch (0, the default: the "
                             "cores, at most 2, for batches of 20,000 offsets or more; 1: one "
                             "Beam job in this process); see docs/performance.md")
    parser.add_argument("--runner", default="FnApiRunner", choices=RUNNERS)
    parser.add_argument("--beam-option", action="append", default=[], metavar="--KEY=VALUE",
                        help="extra Beam pipeline option, repeatable")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="continuous mode: serve Prometheus metrics on this port "
                             "(0: any free port, printed on stderr)")
    parser.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                        help="progress lines on stderr (auto: only when stderr is a terminal)")
    add_warehouse_arg(parser)
    add_topic_args(parser)
    add_kafka_args(parser)
    add_registry_args(parser)
    parser.set_defaults(handler=run)


def parse_start_from(values: list[str], topics: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``--from`` values -> (default for all topics, {topic: override}); times as epoch ms."""
    from cx360.schemas.codec import parse_timestamp_ms

    default, per_topic = "committed", {}
    event_topics = {t for role, t in topics.items() if role != "dead_letter"}
    for value in values:
        topic, sep, what = value.rpartition("=")
        if sep and topic not in event_topics:
            raise UserError(f"--from {value}: {topic!r} is not one of the event topics "
                            f"({', '.join(sorted(event_topics))})")
        if what not in ("committed", "earliest"):
            try:
                what = str(parse_timestamp_ms(what))
            except ValueError:
                raise UserError(f"--from {value}: expected committed, earliest or an ISO-8601 "
                                "time such as 2026-11-20T00:00:00Z") from None
        if sep:
            per_topic[topic] = what
        else:
            default = what
    return default, per_topic


def build_run_config(args: argparse.Namespace):
    from cx360.pipelines.microbatch import RunConfig
    from cx360.transforms.counts import parse_duration
    from cx360.pipelines.options import open_warehouse_arg

    try:
        sizes = tuple(sorted({parse_duration(w) for w in args.windows.split(",") if w.strip()}))
        max_future_ms = parse_duration(args.max_future) * 1000
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not sizes:
        raise UserError("--windows needs at least one window size")
    if any(86400 % s and s % 86400 for s in sizes):
        raise UserError("window sizes must divide a day or be whole days (e.g. 15m, 1h, 1d)")
    from cx360.transforms.windowed import parse_sliding

    try:
        families = parse_sliding(getattr(args, "sliding", "") or "", parse_duration)
    except ValueError as exc:
        raise UserError(f"--sliding: {exc}") from None
    sliding = tuple(sorted({(f.size_s, f.period_s) for f in families}))
    start_from, start_from_topic = parse_start_from(args.start_from, topics_from_args(args))
    workers = getattr(args, "workers", 1)  # other commands (replay) share this function
    if workers < 0:
        raise UserError("--workers must be 0 (automatic) or more")
    max_batch_records = getattr(args, "max_batch_records", None)
    if max_batch_records is not None and max_batch_records < 1:
        raise UserError("--max-batch-records must be at least 1")
    if max_batch_records is None and getattr(args, "once", None) is not None:  # `cx360 run`
        from cx360.pipelines.microbatch import default_processes

        max_batch_records = DEFAULT_BATCH_RECORDS * default_processes(args.runner, workers)
    open_warehouse_arg(args.warehouse).close()  # fail early, in one line: bad URL, locked file
    url = args.warehouse
    from cx360.transforms.warehouse import is_duckdb_url
    from cx360.transforms.warehouse.duckdb_backend import absolute_url

    if is_duckdb_url(url):
        url = absolute_url(url)
    from cx360.transforms.kpis import load_brands

    try:
        brands = tuple(load_brands(args.brands))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--brands {args.brands}: {exc}") from None
    return RunConfig(
        brands=brands, kafka=kafka_config_from_args(args), registry=registry_from_args(args),
        topics=topics_from_args(args), warehouse_url=url, group_id=args.group_id,
        start_from=start_from, start_from_topic=start_from_topic, window_sizes=sizes, sliding=sliding, max_future_ms=max_future_ms,
        max_batch_records=max_batch_records, runner=args.runner, workers=workers,
        beam_args=tuple(args.beam_option))


def hit_cap(results, cap: int | None) -> bool:
    """Whether a batch took as many offsets as allowed from some partition (more may wait)."""
    return bool(cap) and any(r.stop - r.start >= cap for b in results for r in b.ranges)


def summarize(results, elapsed: float, warehouse_url: str) -> dict:
    topics = sorted({t for r in results for t in (*r.read, *r.accepted, *r.dead_letters)})
    per_topic = {}
    for topic in topics:
        read = sum(r.read.get(topic, 0) for r in results)
        accepted = sum(r.accepted.get(topic, 0) for r in results)
        dups = sum(r.duplicates.get(topic, 0) for r in results)
        reasons: dict[str, int] = {}
        for r in results:
            for reason, n in r.dead_letters.get(topic, {}).items():
                reasons[reason] = reasons.get(reason, 0) + n
        dead = sum(reasons.values())
        per_topic[topic] = {"read": read, "accepted": accepted, "duplicates": dups,
                            "unique": accepted - dups, "dead_letters": dead,
                            "dead_letters_by_reason": dict(sorted(reasons.items())),
                            "reconciled": read == accepted + dead}
    rows: dict[str, int] = {}
    for r in results:
        for table, n in r.rows_written.items():
            rows[table] = rows.get(table, 0) + n
    rejected: dict[str, int] = {}
    for r in results:
        for table, n in r.rows_rejected.items():
            rejected[table] = rejected.get(table, 0) + n
    total = sum(v["read"] for v in per_topic.values())
    return {"batches": [r.batch_id for r in results], "topics": per_topic,
            "rows_written": rows, "rows_rejected": rejected, "records_read": total,
            "reconciled": all(v["reconciled"] for v in per_topic.values()),
            "elapsed_s": round(elapsed, 2),
            "records_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
            "warehouse": display_url(warehouse_url)}


def print_summary(summary: dict, out=sys.stdout) -> None:
    if not summary["batches"]:
        print("nothing new to read: the warehouse is up to date", file=out)
    header = f"{'topic':<28}{'read':>9}{'accepted':>10}{'dupes':>8}{'dead':>8}  reconciled"
    print(header, file=out)
    for topic, v in summary["topics"].items():
        print(f"{topic:<28}{v['read']:>9}{v['accepted']:>10}{v['duplicates']:>8}"
              f"{v['dead_letters']:>8}  {'yes' if v['reconciled'] else 'NO'}", file=out)
    dead = [(t, reason, n) for t, v in summary["topics"].items()
            for reason, n in v["dead_letters_by_reason"].items()]
    if dead:
        print("dead letters by reason:", file=out)
        for topic, reason, n in dead:
            print(f"  {topic:<26}{reason:<22}{n:>7}", file=out)
    rows = ", ".join(f"{t} {n}" for t, n in sorted(summary["rows_written"].items()))
    print(f"rows written: {rows or 'none'}", file=out)
    if summary.get("rows_rejected"):
        refused = ", ".join(f"{t} {n}" for t, n in sorted(summary["rows_rejected"].items()))
        print(f"rows refused by the warehouse (now dead letters, stage 'write'): {refused}",
              file=out)
    print("reconciliation (read = accepted + dead letters): "
          + ("OK" if summary["reconciled"] else "MISMATCH"), file=out)
    rate = summary["records_per_s"]
    print(f"elapsed {summary['elapsed_s']:.1f} s"
          + (f" ({rate:,.0f} records/s)" if rate and summary["records_read"] else "")
          + f"; warehouse: {summary['warehouse']}", file=out)


class Progress:
    """One self-overwriting stderr line per batch while its Beam job runs (terminals only)."""

    def __init__(self, out=sys.stderr):
        self.out = out
        self._stop = threading.Event()
        self._thread = None

    def start(self, batch) -> None:
        self.finish()
        records = sum(r.stop - r.start for r in batch.ranges)
        partitions = len({(r.topic, r.partition) for r in batch.ranges})
        started = time.monotonic()
        self._stop.clear()

        def tick():
            spinner = "|/-\\"
            i = 0
            while not self._stop.wait(0.25):
                print(f"\r{spinner[i % 4]} batch {batch.batch_id}: {records:,} records from "
                      f"{partitions} partition(s), {time.monotonic() - started:5.1f} s",
                      end="", file=self.out, flush=True)
                i += 1
            print(f"\r  batch {batch.batch_id}: {records:,} records in "
                  f"{time.monotonic() - started:.1f} s" + " " * 10, file=self.out, flush=True)

        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()

    def finish(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


def run(args: argparse.Namespace) -> int:
    import logging

    from cx360.pipelines.microbatch import OffsetsWentBack, run_once
    from cx360.schemas.registry import RegistryError
    from cx360.transforms.kafka_io import KafkaUnavailable

    config = build_run_config(args)
    log = logging.getLogger("cx360.run")
    metrics = None
    if args.metrics_port is not None:
        if args.once:
            raise UserError("--metrics-port is for continuous mode (without --once)")
        from cx360.pipelines.metrics import PipelineMetrics

        try:
            metrics = PipelineMetrics(args.metrics_port)
        except OSError as exc:
            raise UserError(f"--metrics-port {args.metrics_port}: {exc}") from None
        print(f"cx360 run: Prometheus metrics on http://0.0.0.0:{metrics.port}/metrics",
              file=sys.stderr, flush=True)
    show_progress = args.once and (args.progress == "always" or (
        args.progress == "auto" and sys.stderr.isatty()))
    progress = Progress() if show_progress else None
    log.info("pipeline starting", extra={"cx360": {
        "event": "run_started", "once": args.once,
        "warehouse": display_url(config.warehouse_url),
        "topics": config.topics, "group_id": config.group_id}})
    stop = threading.Event()
    if not args.once:
        def request_stop(signum, _frame):
            print(f"cx360 run: {signal.Signals(signum).name} received, finishing the current "
                  "batch", file=sys.stderr)
            stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while True:
        started = time.monotonic()
        try:
            results = []
            while True:  # with a batch size cap, --once runs batches until caught up
                new = run_once(config, on_batch=progress.start if progress else None,
                               on_batch_done=(lambda _batch: progress.finish()) if progress
                               else None)
                results += new
                if not (args.once and new and hit_cap(new, config.max_batch_records)):
                    break
        except KafkaUnavailable as exc:
            raise UserError(str(exc)) from None
        except OffsetsWentBack as exc:
            raise UserError(str(exc)) from None
        except RegistryError as exc:
            raise UserError(f"schema registry: {exc}") from None
        finally:
            if progress:
                progress.finish()
        summary = summarize(results, time.monotonic() - started, config.warehouse_url)
        if metrics:
            metrics.observe(results, time.time())
        if results:
            log.info("batches done", extra={"cx360": {
                "event": "run_summary", "batches": summary["batches"],
                "records_read": summary["records_read"],
                "reconciled": summary["reconciled"], "elapsed_s": summary["elapsed_s"],
                "records_per_s": summary["records_per_s"], "topics": summary["topics"]}})
        if not summary["reconciled"]:
            log.error("reconciliation failed: read != accepted + dead letters",
                      extra={"cx360": {"event": "reconciliation_failed",
                                       "topics": summary["topics"]}})
        if args.json:
            print(json.dumps(summary), flush=True)
        elif results or args.once:
            print_summary(summary)
        if not summary["reconciled"]:
            exit_code = 3
        if args.once or stop.is_set():
            return exit_code
        if not results:
            stop.wait(args.interval)
        if stop.is_set():
            return exit_code
