"""The micro-batch driver: plans offset ranges, keeps the batch ledger, runs the Beam job.

One batch = for every topic-partition, the offsets from the last applied position (or the
earliest offset) up to the high watermark measured when the batch is planned. The ranges are
recorded in the warehouse before the Beam job starts; the job writes its results and marks
the batch applied in one transaction; then the offsets are committed to Kafka under the group
id (for lag monitoring with standard tools). A batch left 'pending' by a crash is re-run
first, with exactly its recorded ranges and clock, so the warehouse ends exactly as if the
crash had not happened.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import defaultdict
from typing import Sequence

import apache_beam as beam

from cx360.pipelines.job import TABLES_WRITTEN, JobSettings, build_pipeline, local_options
from cx360.schemas.registry import SchemaRegistry
from cx360.transforms.kafka_io import (KafkaConfig, PartitionRange, beginning_offsets,
                                       commit_group_offsets, first_offset_at_or_after,
                                       high_watermarks, list_partitions)
from cx360.transforms.warehouse import TABLES, Batch, open_warehouse
from cx360.transforms.warehouse.base import subtract_intervals

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class RunConfig:
    kafka: KafkaConfig
    registry: SchemaRegistry
    topics: dict[str, str]
    warehouse_url: str
    group_id: str = "cx360"
    start_from: str = "committed"          # committed | earliest | epoch ms, for every topic
    start_from_topic: dict = dataclasses.field(default_factory=dict)  # topic -> same, overrides
    window_sizes: tuple[int, ...] = (3600, 86400)
    sliding: tuple[tuple[int, int], ...] = ()   # (size, period) of sliding KPI windows
    max_future_ms: int = 15 * 60 * 1000
    max_batch_records: int | None = None   # per partition; None = everything available
    runner: str = "FnApiRunner"
    beam_args: Sequence[str] = ()
    read_batch_size: int = 2000
    stall_timeout_s: float = 120.0
    brands: tuple = ()
    # Local runner only: worker processes per batch (pipelines/parallel.py); 0 = automatic
    # (the machine's cores, at most 2, for batches of at least PARALLEL_MIN_RECORDS).
    workers: int = 1


#: Parallel mode plans at most this many capped batches ahead in one run_once call.
PLAN_AHEAD_MAX = 8

#: Below this many offsets a batch runs as one job: starting the workers' jobs costs more.
PARALLEL_MIN_RECORDS = 20_000


def default_processes(runner: str, workers: int) -> int:
    """Processes working on a large batch: ``workers`` if given, else the machine's cores
    (at most 2) on the local runner; 1 on a distributed runner (it parallelises itself)."""
    if runner not in ("FnApiRunner", "DirectRunner"):
        return 1
    if workers:
        return max(1, workers)
    return max(1, min(2, os.cpu_count() or 1))


def batch_workers(config: RunConfig, batch: Batch) -> int:
    """How many processes run ``batch`` (1: the single Beam job in this process)."""
    processes = default_processes(config.runner, config.workers)
    if config.workers == 0 and sum(r.stop - r.start for r in batch.ranges) < PARALLEL_MIN_RECORDS:
        return 1
    return processes


@dataclasses.dataclass
class BatchResult:
    batch_id: str
    ranges: list[PartitionRange]
    read: dict[str, int]
    accepted: dict[str, int]
    duplicates: dict[str, int]
    dead_letters: dict[str, dict[str, int]]      # topic -> reason -> count
    rows_written: dict[str, int]
    already_applied: bool
    seconds: float
    event_time_max: dict[str, int] = dataclasses.field(default_factory=dict)  # topic -> ms
    health: list[dict] = dataclasses.field(default_factory=list)  # pipeline_health rows
    phases: dict = dataclasses.field(default_factory=dict)  # parallel mode: seconds per phase
    # table -> rows the warehouse refused one by one (BigQuery); written as dead letters
    rows_rejected: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(r.stop - r.start for r in self.ranges)


def _counters(result) -> dict[str, int]:
    """Committed counter values by ``namespace/name``, summed over steps."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = defaultdict(int)
    for counter in result.metrics().query(MetricsFilter())["counters"]:
        name = f"{counter.key.metric.namespace}/{counter.key.metric.name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] += value or 0
    return totals


def _distribution_max(result, prefix: str) -> dict[str, int]:
    """Max of the Beam distributions ``namespace/name`` starting with ``prefix``, by suffix."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for dist in result.metrics().query(MetricsFilter())["distributions"]:
        name = f"{dist.key.metric.namespace}/{dist.key.metric.name}"
        value = dist.committed if dist.committed is not None else dist.attempted
        if name.startswith(prefix) and value is not None and value.count:
            key = name[len(prefix):]
            out[key] = max(out.get(key, value.max), value.max)
    return out


def is_replay_batch(batch: Batch) -> bool:
    """Batches of `cx360 replay-dead-letters` (ranges on the dead-letter topic): only the
    replay command runs and recovers them."""
    return batch.batch_id.startswith("replay-")


def _by_topic(counters: dict[str, int], prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in counters.items():
        if name.startswith(prefix):
            out[name[len(prefix):]] = out.get(name[len(prefix):], 0) + value
    return out


class OffsetsWentBack(Exception):
    """The topic holds fewer offsets than the warehouse has already applied."""


def plan_ranges(config: RunConfig, warehouse) -> list[PartitionRange]:
    """New offset ranges to read: from the start position to the high watermark, minus every
    offset of a recorded batch, applied or pending (so nothing is ever counted twice)."""
    event_topics = [t for role, t in config.topics.items() if role != "dead_letter"]
    partitions = list_partitions(config.kafka, event_topics)
    tps = [(t, p) for t in event_topics for p in partitions[t]]
    applied = warehouse.claimed_intervals()
    earliest = beginning_offsets(config.kafka, tps)
    ends = high_watermarks(config.kafka, earliest)
    starts = {}
    for tp in tps:
        start_from = config.start_from_topic.get(tp[0], config.start_from)
        if start_from == "earliest" or (start_from == "committed" and not applied.get(tp)):
            starts[tp] = earliest[tp]
        elif start_from == "committed":
            starts[tp] = max(earliest[tp], applied[tp][-1][1])
        else:  # a timestamp: the first record stamped at or after it
            starts[tp] = first_offset_at_or_after(config.kafka, tp, int(start_from),
                                                  earliest[tp], ends[tp])
    for tp in tps:
        if applied.get(tp) and ends[tp] < applied[tp][-1][1]:
            raise OffsetsWentBack(
                f"{tp[0]}/{tp[1]} ends at offset {ends[tp]} but the warehouse already holds "
                f"offsets up to {applied[tp][-1][1]}: the topic was deleted and re-created (or "
                "the in-memory local broker restarted). Use a new warehouse for the new data.")
    ranges = []
    for tp in tps:
        stop = ends[tp]
        if config.max_batch_records:
            stop = min(stop, starts[tp] + config.max_batch_records)
        for a, b in subtract_intervals(starts[tp], stop, applied.get(tp, [])):
            ranges.append(PartitionRange(tp[0], tp[1], a, b))
    return ranges


def job_settings(config: RunConfig, batch: Batch, topics: dict | None = None) -> JobSettings:
    """The Beam job's settings for one recorded batch (its id and clock): the one place a
    run-time setting is passed on, for normal batches and dead-letter replays alike."""
    return JobSettings(
        kafka=config.kafka, registry=config.registry, topics=topics or config.topics,
        warehouse_url=config.warehouse_url, batch_id=batch.batch_id, now_ms=batch.created_ms,
        window_sizes=config.window_sizes, sliding=config.sliding,
        max_future_ms=config.max_future_ms,
        read_batch_size=config.read_batch_size, stall_timeout_s=config.stall_timeout_s,
        brands=tuple(config.brands))


def run_batch(config: RunConfig, batch: Batch, parallel=None, next_batch: Batch | None = None
              ) -> BatchResult:
    """Run the Beam job over one recorded batch; with ``parallel`` (a
    :class:`~cx360.pipelines.parallel.ParallelBatches`), over this and worker processes, which
    may start decoding ``next_batch`` while this one is written."""
    started = time.monotonic()
    if parallel is not None:
        counters, event_time_max, written, phases = parallel.run(batch, next_batch)
        if written is None:
            counters["cx360.write/batches_already_applied"] = 1
        for table, count in (written or {}).items():
            counters[f"cx360.write/rows_written:{table}"] = count
        result = _batch_result(batch, counters, event_time_max, started)
        result.phases = phases
        return result
    settings = job_settings(config, batch)
    pipeline = beam.Pipeline(options=local_options(config.runner, config.beam_args))
    build_pipeline(pipeline, settings, batch.ranges)
    result = pipeline.run()
    result.wait_until_finish()
    return _batch_result(batch, _counters(result),
                         _distribution_max(result, "cx360.dedupe/event_time_ms:"), started)


def _batch_result(batch: Batch, counters: dict, event_time_max: dict,
                  started: float) -> BatchResult:
    dead: dict[str, dict[str, int]] = defaultdict(dict)
    for name, value in _by_topic(counters, "cx360.decode/dead_letters:").items():
        topic, reason = name.rsplit(":", 1)
        dead[topic][reason] = dead[topic].get(reason, 0) + value
    return BatchResult(
        batch_id=batch.batch_id, ranges=batch.ranges,
        read=_by_topic(counters, "cx360.read/records_read:"),
        accepted=_by_topic(counters, "cx360.decode/accepted:"),
        duplicates=_by_topic(counters, "cx360.dedupe/duplicates:"),
        dead_letters=dict(dead),
        rows_written=_by_topic(counters, "cx360.write/rows_written:"),
        rows_rejected=_by_topic(counters, "cx360.write/rows_rejected:"),
        already_applied=counters.get("cx360.write/batches_already_applied", 0) > 0,
        seconds=time.monotonic() - started,
        event_time_max=event_time_max)


def _commit(config: RunConfig, warehouse, batch: Batch) -> None:
    """Kafka offsets for lag tools, after the warehouse transaction; then mark committed."""
    positions: dict[tuple[str, int], int] = {}
    for batch_range in batch.ranges:
        tp = (batch_range.topic, batch_range.partition)
        positions[tp] = max(positions.get(tp, 0), batch_range.stop)
    commit_group_offsets(config.kafka, config.group_id, positions)
    warehouse.set_batch_status(batch.batch_id, "committed")


def new_batch_id(created_ms: int) -> str:
    return f"b{created_ms}-{uuid.uuid4().hex[:8]}"


def run_once(config: RunConfig, on_batch=None, on_batch_done=None) -> list[BatchResult]:
    """Recover unfinished batches, then process everything available now as one batch.
    ``on_batch(batch)`` and ``on_batch_done(batch)`` are called around each Beam job."""
    results = []
    warehouse = open_warehouse(config.warehouse_url)
    try:
        warehouse.ensure_tables(TABLES[name] for name in TABLES_WRITTEN)
        warehouse.ensure_views()
        # A batch applied but not committed to Kafka: only the Kafka commit is missing.
        for batch in warehouse.batches("applied"):
            if not is_replay_batch(batch):
                _commit(config, warehouse, batch)
        todo = [b for b in warehouse.batches("pending") if not is_replay_batch(b)]
        for batch in todo:
            LOG.warning("recovering batch %s left pending by an interrupted run: re-running "
                        "its %d offset ranges", batch.batch_id, len(batch.ranges))
        ranges = plan_ranges(config, warehouse)
        if batch_workers(config, Batch("", 0, "pending", ranges)) > 1:
            # A parallel run: its worker processes import and load lexicons meanwhile.
            from cx360.pipelines.parallel import start_workers

            start_workers(batch_workers(config, Batch("", 0, "pending", ranges)))
        created = 0
        while ranges:
            # Strictly increasing clocks: pending batches are recovered in (created_ms,
            # batch_id) order, which must be the order they were planned in.
            created = max(int(time.time() * 1000), created + 1)
            batch = Batch(new_batch_id(created), created, "pending", ranges)
            warehouse.record_batch(batch)
            todo.append(batch)
            # In parallel mode the workers decode batch n+1 while batch n is written, so the
            # next capped batch is planned (and recorded) now; a single job plans one.
            if (batch_workers(config, batch) < 2 or not config.max_batch_records
                    or len(todo) >= PLAN_AHEAD_MAX):
                break
            ranges = plan_ranges(config, warehouse)
    finally:
        warehouse.close()
    workers = max((batch_workers(config, b) for b in todo), default=1)
    parallel = None
    if workers > 1:
        from cx360.pipelines.parallel import ParallelBatches

        parallel = ParallelBatches(config, workers)
    try:
        for i, batch in enumerate(todo):
            results.append(_run_and_commit(config, batch, on_batch, on_batch_done, parallel,
                                           todo[i + 1] if i + 1 < len(todo) else None))
    finally:
        if parallel is not None:
            parallel.close()
    return results


def _run_and_commit(config: RunConfig, batch: Batch, on_batch, on_batch_done, parallel,
                    next_batch: Batch | None) -> BatchResult:
    if on_batch:
        on_batch(batch)
    try:
        result = run_batch(config, batch, parallel, next_batch)
    finally:
        if on_batch_done:
            on_batch_done(batch)
    warehouse = open_warehouse(config.warehouse_url)
    try:
        status = {b.batch_id: b.status for b in warehouse.batches()}[batch.batch_id]
        if status == "pending":
            raise RuntimeError(f"batch {batch.batch_id} finished but was not applied")
        _commit(config, warehouse, batch)
        # Observability only, after the batch is applied and committed: a failure here
        # (or a crash before it) loses one health row, never data.
        from cx360.pipelines.health import record_health

        result.health = record_health(config, warehouse, batch, result)
    finally:
        warehouse.close()
    LOG.info("batch %s applied", batch.batch_id, extra={"cx360": {
        "event": "batch_applied", "batch_id": batch.batch_id, "records": result.records,
        "read": result.read, "accepted": result.accepted,
        "duplicates": result.duplicates, "dead_letters": result.dead_letters,
        "rows_written": result.rows_written, "seconds": round(result.seconds, 3),
        "event_time_max_ms": result.event_time_max, "phases": result.phases,
        "lag": sum(r["lag"] or 0 for r in result.health)}})
    return result
