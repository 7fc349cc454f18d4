"""Pipeline health in the production streaming job: ``pipeline_health`` rows per interval and
topic-partition, and Beam metrics.

The micro-batch mode writes one row per batch and partition (pipelines/health.py). A
streaming job has no batches, so its unit is an **interval** of Kafka record time (default
60 s, ``StreamingSettings.health_interval_s``): every record and every dead letter is counted
in the interval of its record's Kafka timestamp, the time the source's watermark follows.
Components are combined per (interval, topic, partition) in fixed windows with the job's
trigger policy (on-time pane at the watermark, a late pane per late record within the allowed
lateness + slack, accumulating), and each pane becomes a row written by the replace-upsert
sink with the pane guard (``HEALTH_PANES``: the newest pane wins whatever the write order).

Columns (same table and schema as micro-batch mode):

=====================  ========================================================================
batch_id               ``stream:<interval start, ISO UTC>/<interval>s``
recorded_at            processing time when the pane was emitted
records_in             records whose Kafka timestamp is in the interval
dead_letters (+JSON)   dead letters of those records (decode, validate, too_late ...), by reason
accepted               records_in - dead_letters (duplicates included, as in micro-batch mode)
position               the last offset read in the interval + 1
max_event_time         the newest Kafka record timestamp of the interval: in streaming the
                       event-time watermark follows record timestamps (docs/streaming.md)
freshness_s            recorded_at - max_event_time
batch_seconds          the interval length
records_per_s          records_in / interval length (this partition)
high_watermark, lag    NULL: a streaming job does not fetch high watermarks per interval;
                       ``cx360 health`` computes the lag live from the newest ``position``
                       and a Fetch, Kafka tools from the group offsets the job commits
=====================  ========================================================================

Beam metrics (namespace ``cx360.health``): counters ``records_in:<topic>/<partition>`` and
``dead_letters:<topic>/<partition>:<reason>`` (once per record, not per pane), and gauges
``position:<topic>/<partition>`` and ``freshness_ms:<topic>/<partition>`` per pane.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as tr
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from cx360.transforms.kafka_io import unpack_records


@dataclasses.dataclass
class HealthComponent:
    """Mergeable health measures of one topic-partition in one interval."""

    records_in: int = 0
    position: int | None = None        # last offset + 1
    max_kafka_ms: int | None = None
    dead: dict = dataclasses.field(default_factory=dict)   # reason -> count

    def merge(self, other: "HealthComponent") -> "HealthComponent":
        self.records_in += other.records_in
        self.position = _max(self.position, other.position)
        self.max_kafka_ms = _max(self.max_kafka_ms, other.max_kafka_ms)
        for reason, n in other.dead.items():
            self.dead[reason] = self.dead.get(reason, 0) + n
        return self


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)


def _stamp(ms: int | None, fallback: Timestamp) -> Timestamp:
    return Timestamp(micros=ms * 1000) if ms is not None and ms >= 0 else fallback


class RecordComponentsFn(beam.DoFn):
    """A record batch -> one component per (topic-partition, interval) it touches, stamped
    with the newest Kafka timestamp of those records."""

    def __init__(self, interval_s: int):
        self.interval_ms = interval_s * 1000

    def process(self, batch, ts=beam.DoFn.TimestampParam) -> Iterator:
        parts: dict[tuple, HealthComponent] = {}
        for record in unpack_records(batch):
            at = _stamp(record.timestamp_ms, ts)
            ms = at.micros // 1000
            key = (record.topic, record.partition, ms - ms % self.interval_ms)
            c = parts.setdefault(key, HealthComponent())
            c.records_in += 1
            c.position = _max(c.position, record.offset + 1)
            c.max_kafka_ms = _max(c.max_kafka_ms, ms)
        for (topic, partition, _), c in parts.items():
            Metrics.counter("cx360.health", f"records_in:{topic}/{partition}").inc(c.records_in)
            yield TimestampedValue(((topic, partition), c),
                                   Timestamp(micros=c.max_kafka_ms * 1000))


def dead_letter_component(dead: dict, ts=beam.DoFn.TimestampParam):
    """A dead letter -> a component counting it, stamped with its record's Kafka time."""
    at = _stamp(dead.get("kafka_timestamp"), ts)
    Metrics.counter("cx360.health",
                    f"dead_letters:{dead['topic']}/{dead['partition']}:{dead['reason']}").inc()
    return TimestampedValue(((dead["topic"], dead["partition"]),
                             HealthComponent(dead={dead["reason"]: 1})), at)


class CombineHealth(beam.CombineFn):
    def create_accumulator(self) -> HealthComponent:
        return HealthComponent()

    def add_input(self, acc: HealthComponent, c: HealthComponent) -> HealthComponent:
        return acc.merge(c)

    def merge_accumulators(self, accs: Iterable[HealthComponent]) -> HealthComponent:
        out = HealthComponent()
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: HealthComponent) -> HealthComponent:
        return acc


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class HealthRowsFn(beam.DoFn):
    """((topic, partition), component) per window pane -> a ``pipeline_health`` row."""

    def __init__(self, interval_s: int, generation: int, fixed_now_ms: int | None = None):
        self.interval_s = interval_s
        self.generation = generation
        self.fixed_now_ms = fixed_now_ms

    def process(self, element, window=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam) -> Iterator[dict]:
        (topic, partition), c = element
        now_ms = self.fixed_now_ms if self.fixed_now_ms is not None else int(time.time() * 1000)
        start_ms = window.start.micros // 1000
        dead = sum(c.dead.values())
        freshness_ms = now_ms - c.max_kafka_ms if c.max_kafka_ms is not None else None
        where = f"{topic}/{partition}"
        if c.position is not None:
            Metrics.gauge("cx360.health", f"position:{where}").set(c.position)
        if freshness_ms is not None:
            Metrics.gauge("cx360.health", f"freshness_ms:{where}").set(freshness_ms)
        yield {
            "batch_id": f"stream:{_iso(start_ms)}/{self.interval_s}s", "topic": topic,
            "partition": partition, "recorded_at": now_ms, "records_in": c.records_in,
            "accepted": c.records_in - dead, "dead_letters": dead,
            "dead_letters_by_reason": json.dumps(dict(sorted(c.dead.items()))),
            "position": c.position, "high_watermark": None, "lag": None,
            "max_event_time": c.max_kafka_ms,
            "freshness_s": freshness_ms / 1000.0 if freshness_ms is not None else None,
            "batch_seconds": float(self.interval_s),
            "records_per_s": round(c.records_in / self.interval_s, 3),
            "pane_index": pane.index, "pane_timing": _TIMING.get(pane.timing, "UNKNOWN"),
            "generation": self.generation}


_TIMING = {0: "EARLY", 1: "ON_TIME", 2: "LATE"}


class StreamHealth(beam.PTransform):
    """(record batches, dead letters) -> ``pipeline_health`` rows, one per interval and
    topic-partition and pane (the sink keeps the newest)."""

    def __init__(self, interval_s: int, allowed_lateness_s: int, generation: int,
                 fixed_now_ms: int | None = None):
        super().__init__()
        if interval_s <= 0:
            raise ValueError("the health interval must be positive")
        self.interval_s = interval_s
        self.allowed_lateness_s = allowed_lateness_s
        self.generation = generation
        self.fixed_now_ms = fixed_now_ms

    def expand(self, inputs):
        batches, dead_letters = inputs
        records = batches | "RecordComponents" >> beam.ParDo(
            RecordComponentsFn(self.interval_s))
        dead = dead_letters | "DeadLetterComponents" >> beam.Map(dead_letter_component)
        return ((records, dead)
                | "Components" >> beam.Flatten()
                | "Intervals" >> beam.WindowInto(
                    FixedWindows(self.interval_s),
                    trigger=tr.AfterWatermark(late=tr.AfterCount(1)),
                    accumulation_mode=tr.AccumulationMode.ACCUMULATING,
                    allowed_lateness=Duration(seconds=self.allowed_lateness_s))
                | "PerPartition" >> beam.CombinePerKey(CombineHealth())
                | "Rows" >> beam.ParDo(HealthRowsFn(self.interval_s, self.generation,
                                                    self.fixed_now_ms)))
