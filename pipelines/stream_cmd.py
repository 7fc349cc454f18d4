"""`cx360 stream`: the production streaming job on Dataflow or Flink (see docs/streaming.md).

    cx360 stream --runner DataflowRunner --bootstrap-servers kafka-1:9092 \\
        --warehouse bigquery:PROJECT.DATASET -- \\
        --project=PROJECT --region=europe-west3 --temp_location=gs://BUCKET/tmp \\
        --sdk_container_image=IMAGE

Everything after ``--`` is passed to Beam as pipeline options. Add ``--dry_run=True`` there to
build the Dataflow job without submitting it. The local micro-batch mode is ``cx360 run``.
"""
from __future__ import annotations

import argparse
import os
import sys

from cx360.pipelines.cli import UserError
from cx360.pipelines.options import (add_kafka_args, add_registry_args, add_topic_args,
                                     kafka_config_from_args, registry_from_args,
                                     topics_from_args)
from cx360.pipelines.run_cmd import DEFAULT_WAREHOUSE  # one default for both modes

RUNNERS = ("DataflowRunner", "FlinkRunner", "PortableRunner", "DirectRunner")


def register(sub) -> None:
    parser = sub.add_parser(
        "stream", help="run the streaming job on Dataflow/Flink (Beam options after --)",
        description="Production streaming: event-time windows with early, on-time and late "
                    "panes, too-late events to the dead letters, replace-upserts into the "
                    "warehouse. Beam pipeline options go after '--'.")
    parser.add_argument("--runner", default="DataflowRunner", choices=RUNNERS,
                        help="a runner with streaming semantics (default DataflowRunner); "
                             "DirectRunner only with --kafka-source java")
    parser.add_argument("--kafka-source", default="python", choices=["python", "java"],
                        help="python: cx360's Kafka reader (default); java: Beam's "
                             "ReadFromKafka (needs a Java expansion service from Maven)")
    parser.add_argument("--start-from", default="committed", metavar="committed|earliest|TIME",
                        help="per partition: the consumer group's committed offset (default; "
                             "earliest where the group has none), the earliest offset, or the "
                             "first record at or after an ISO time (e.g. 2026-11-23T00:00Z)")
    parser.add_argument("--group-id", default="cx360",
                        help="consumer group: --start-from committed reads its offsets, and "
                             "the job commits its read positions under it (for lag tools)")
    parser.add_argument("--windows", default="1h,1d",
                        help="fixed window sizes, comma-separated (default 1h,1d; '' for none)")
    parser.add_argument("--sliding", default="",
                        help="sliding windows SIZE/PERIOD, comma-separated, e.g. 1h/15m")
    parser.add_argument("--session-gap", default="30m",
                        help="web session inactivity gap (default 30m; 'off' for no sessions)")
    parser.add_argument("--allowed-lateness", default="6h",
                        help="how long after a window's end late events still count (default "
                             "6h); later ones are dead letters with reason too_late")
    parser.add_argument("--lateness-slack", default="10m",
                        help="extra lateness the GroupByKeys allow beyond --allowed-lateness, "
                             "so nothing the lateness gate passes is dropped (default 10m)")
    parser.add_argument("--early-firing", default="60s",
                        help="early panes this long (processing time) after a window's first "
                             "new event (default 60s)")
    parser.add_argument("--dedupe-horizon", default="24h",
                        help="remember event ids at least this long after their event time "
                             "(default 24h)")
    parser.add_argument("--max-future", default="15m",
                        help="allowed clock skew: events stamped further ahead of the "
                             "processing time are dead letters (default 15m)")
    parser.add_argument("--brands", default=os.environ.get("CX360_BRANDS"),
                        help="JSON file of brands and competitive sets for share of voice "
                             "(default: the demo brands shipped with cx360)")
    parser.add_argument("--wait", action="store_true",
                        help="block until the job ends (default: return once submitted)")
    parser.add_argument("--warehouse",
                        default=os.environ.get("CX360_WAREHOUSE", DEFAULT_WAREHOUSE),
                        help="warehouse URL (env CX360_WAREHOUSE); on Dataflow the BigQuery "
                             f"backend (default {DEFAULT_WAREHOUSE})")
    add_topic_args(parser)
    add_kafka_args(parser)
    add_registry_args(parser)
    parser.add_argument("beam_args", nargs="*", metavar="-- BEAM_OPTION",
                        help="Beam pipeline options, after '--'")
    parser.set_defaults(handler=run)


def _seconds(flag: str, text: str) -> int:
    from cx360.transforms.counts import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def parse_start(text: str) -> str | int:
    """'committed', 'earliest', or an ISO time as epoch ms."""
    from datetime import datetime, timezone

    if text in ("committed", "earliest"):
        return text
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--start-from: expected committed, earliest or an ISO time, got "
                        f"{text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def start_offsets(config, topics: list[str], start_from: str | int, group_id: str
                  ) -> tuple[dict[tuple[str, int], int], list[str]]:
    """First offset of every partition; also the partitions that fell back to earliest."""
    from cx360.transforms.kafka_io import (beginning_offsets, committed_group_offsets,
                                           first_offset_at_or_after, high_watermarks,
                                           list_partitions)

    partitions = list_partitions(config, topics)
    tps = [(t, p) for t in topics for p in partitions[t]]
    earliest = beginning_offsets(config, tps)
    if start_from == "earliest":
        return earliest, []
    if isinstance(start_from, int):
        ends = high_watermarks(config, earliest)
        return {tp: first_offset_at_or_after(config, tp, start_from, earliest[tp], ends[tp])
                for tp in tps}, []
    committed = committed_group_offsets(config, group_id, tps)
    offsets, fallback = {}, []
    for tp in tps:
        position = committed.get(tp)
        if position is None:
            fallback.append(f"{tp[0]}/{tp[1]}")
            offsets[tp] = earliest[tp]
        else:
            offsets[tp] = max(position, earliest[tp])
    return offsets, fallback


def build_settings(args: argparse.Namespace):
    """The job's settings from the options: validated first, then the start offsets are
    looked up in Kafka (Python source only; KafkaIO finds its own)."""
    import dataclasses

    from cx360.pipelines.streaming import StreamingSettings
    from cx360.transforms.counts import parse_duration
    from cx360.transforms.windowed import parse_sliding

    windows = tuple(sorted({_seconds("--windows", w) for w in args.windows.split(",")
                            if w.strip()}))
    try:
        sliding = tuple((f.size_s, f.period_s)
                        for f in parse_sliding(args.sliding, parse_duration))
    except ValueError as exc:
        raise UserError(f"--sliding: {exc}") from None
    gap = (None if args.session_gap.strip().lower() in ("off", "none", "0", "")
           else _seconds("--session-gap", args.session_gap))
    lateness = (0 if args.allowed_lateness.strip() in ("0", "0s")
                else _seconds("--allowed-lateness", args.allowed_lateness))
    start = parse_start(args.start_from)
    from cx360.transforms.kpis import load_brands

    try:
        brands = tuple(load_brands(args.brands))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--brands {args.brands}: {exc}") from None
    warehouse = args.warehouse
    from cx360.transforms.warehouse import is_duckdb_url
    from cx360.transforms.warehouse.duckdb_backend import absolute_url

    if is_duckdb_url(warehouse):
        from cx360.transforms.warehouse import WarehouseError

        try:
            warehouse = absolute_url(warehouse)
        except WarehouseError as exc:
            raise UserError(str(exc)) from None
    try:
        settings = StreamingSettings(
            kafka=kafka_config_from_args(args), registry=registry_from_args(args),
            topics=topics_from_args(args), warehouse_url=warehouse, window_sizes=windows,
            sliding=sliding, session_gap_s=gap, allowed_lateness_s=lateness,
            lateness_slack_s=_seconds("--lateness-slack", args.lateness_slack),
            early_firing_s=_seconds("--early-firing", args.early_firing),
            dedupe_horizon_s=_seconds("--dedupe-horizon", args.dedupe_horizon),
            max_future_ms=_seconds("--max-future", args.max_future) * 1000,
            kafka_source=args.kafka_source, group_id=args.group_id,
            java_start_from="timestamp" if isinstance(start, int) else start,
            java_start_time_ms=start if isinstance(start, int) else None, brands=brands)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.kafka_source != "python":
        return settings
    from cx360.transforms.kafka_io import KafkaUnavailable

    try:
        offsets, fallback = start_offsets(settings.kafka, settings.event_topics, start,
                                          args.group_id)
    except KafkaUnavailable as exc:
        raise UserError(str(exc)) from None
    if fallback:
        print(f"cx360 stream: no committed offsets for group {args.group_id!r} on "
              f"{', '.join(fallback)}: starting there at the earliest offset", file=sys.stderr)
    return dataclasses.replace(settings, start_offsets=offsets)


def beam_flags(args: argparse.Namespace) -> list[str]:
    flags = [a for a in args.beam_args if a != "--"]
    for flag in flags:
        if not flag.startswith("--"):
            raise UserError(f"Beam options look like --name=value, got {flag!r}")
        if flag.split("=", 1)[0] in ("--runner", "--streaming"):
            raise UserError(f"{flag.split('=', 1)[0]} is set by cx360 stream itself")
    return flags


def run(args: argparse.Namespace) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import TestOptions

    from cx360.pipelines.streaming import build_streaming_pipeline, streaming_options

    flags = beam_flags(args)
    if args.runner == "DirectRunner" and args.kafka_source == "python":
        raise UserError("the local runners cannot run the open-ended Kafka source (the "
                        "BundleBasedDirectRunner cannot run a Splittable DoFn that defers "
                        "work; the FnApiRunner has only batch semantics): run locally with "
                        "`cx360 run` (micro-batches), or use DataflowRunner/FlinkRunner")
    settings = build_settings(args)
    if args.runner != "DirectRunner" and settings.warehouse_url.startswith("duckdb:"):
        print(f"cx360 stream: warning: {settings.warehouse_url} is a file on one machine; a "
              f"distributed {args.runner} job needs a shared warehouse (BigQuery on Dataflow)",
              file=sys.stderr)
    try:
        options = streaming_options(args.runner, flags)
    except (ValueError, SystemExit) as exc:
        raise UserError(f"bad Beam options {' '.join(flags)}: {exc}") from None
    dry_run = options.view_as(TestOptions).dry_run
    if dry_run and args.runner != "DataflowRunner":
        raise UserError("--dry_run is honoured by the DataflowRunner only")
    if not dry_run:
        from cx360.pipelines.streaming import prepare_warehouse
        from cx360.transforms.warehouse import WarehouseError

        try:
            prepare_warehouse(settings.warehouse_url)  # tables and KPI views, before the job
        except WarehouseError as exc:
            raise UserError(f"warehouse {settings.warehouse_url}: {exc}") from None
    pipeline = beam.Pipeline(options=options)
    build_streaming_pipeline(pipeline, settings)
    result = pipeline.run()
    job = getattr(result, "job", None)
    if dry_run:
        steps = len(job.proto_pipeline.components.transforms) if job is not None else "?"
        print(f"dry run: {args.runner} job built ({steps} transforms), not submitted")
        return 0
    job_id = getattr(result, "job_id", None)
    print(f"submitted to {args.runner}" + (f": job {job_id()}" if callable(job_id) else "")
          + f" (state {result.state})")
    if args.wait:
        result.wait_until_finish()
        print(f"job finished: {result.state}")
    return 0
