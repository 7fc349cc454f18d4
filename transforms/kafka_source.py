"""The Kafka source: a Splittable DoFn that reads offset ranges of topic-partitions.

Why not Beam's ReadFromKafka: it is a Java cross-language transform whose expansion service is
downloaded from Maven at pipeline build time. It is available on Dataflow/Flink (see
deploy/), but this reader runs everywhere, including offline laptops and CI. It never joins a
consumer group and never asks ListOffsets for the end of a partition (see kafka_io).
"""
from __future__ import annotations

import time
from typing import Iterator

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp

from cx360.transforms.kafka_io import (OPEN_END, KafkaConfig, KafkaRecord, PartitionRange,
                                       consumer, pack_records)


class _OffsetRangeProvider(RestrictionProvider):
    """Restriction = the offsets still to read of one PartitionRange."""

    def __init__(self, split_size: int = 0):
        self.split_size = split_size

    def initial_restriction(self, element: PartitionRange) -> OffsetRange:
        return OffsetRange(element.start, OPEN_END if element.stop is None else element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: PartitionRange, restriction: OffsetRange) -> int:
        return restriction.size()

    def split(self, element: PartitionRange, restriction: OffsetRange):
        # Bounded ranges (replay, backfill) may be cut into pieces a runner can read in
        # parallel; open-ended ones are split dynamically by the runner instead.
        if self.split_size and restriction.stop != OPEN_END:
            yield from restriction.split(self.split_size, self.split_size)
        else:
            yield restriction


class ReadPartitionRangesFn(beam.DoFn):
    """Reads each :class:`PartitionRange` and emits batches of up to ``batch_size``
    :class:`KafkaRecord`, packed into one bytes value each (``kafka_io.pack_records``; read
    them with ``unpack_records``): one element per record, or a list Beam encodes record by
    record, would cost far more than the read.

    Bounded ranges finish when ``stop`` is reached (gaps from compaction or transaction
    markers included). Open-ended ranges defer their remainder when no data is waiting and
    advance the watermark to ``now - idle_lag`` when idle, so an idle partition cannot stall
    the pipeline's watermark.
    """

    def __init__(self, config: KafkaConfig, batch_size: int = 2000, poll_timeout_ms: int = 200,
                 stall_timeout_s: float = 120.0, idle_lag_s: float = 5.0, split_size: int = 0,
                 max_clock_skew_s: float = 900.0):
        self.config = config
        self.max_clock_skew_s = max_clock_skew_s
        self.batch_size = batch_size
        self.poll_timeout_ms = poll_timeout_ms
        self.stall_timeout_s = stall_timeout_s
        self.idle_lag_s = idle_lag_s
        self.records_read = Metrics.counter("cx360.read", "records_read")
        self.bytes_read = Metrics.counter("cx360.read", "bytes_read")
        self._consumer = None
        self._provider = _OffsetRangeProvider(split_size)

    def setup(self):
        self._consumer = consumer(self.config, max_poll_records=self.batch_size)

    def teardown(self):
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(self, element: PartitionRange,
                tracker=beam.DoFn.RestrictionParam(_OffsetRangeProvider()),
                watermark=beam.DoFn.WatermarkEstimatorParam(
                    ManualWatermarkEstimator.default_provider())
                ) -> Iterator[beam.window.TimestampedValue]:
        from kafka import TopicPartition

        tp = TopicPartition(element.topic, element.partition)
        restriction = tracker.current_restriction()
        bounded = restriction.stop != OPEN_END
        kafka_consumer = self._consumer
        kafka_consumer.assign([tp])
        kafka_consumer.seek(tp, restriction.start)
        per_topic = Metrics.counter("cx360.read", f"records_read:{element.topic}")
        batch: list[KafkaRecord] = []
        last_progress = time.monotonic()
        position = restriction.start

        def flush():
            if batch:
                self.records_read.inc(len(batch))
                per_topic.inc(len(batch))
                first_ts = Timestamp.of(batch[0].timestamp_ms / 1000.0)
                out = beam.window.TimestampedValue(pack_records(batch), first_ts)
                batch.clear()
                return out
            return None

        while True:
            if bounded and position >= restriction.stop:
                break
            polled = kafka_consumer.poll(timeout_ms=self.poll_timeout_ms,
                                         max_records=self.batch_size)
            records = polled.get(tp, [])
            if not records:
                if bounded:
                    hw = kafka_consumer.highwater(tp)
                    if hw is not None and hw <= position and kafka_consumer.position(tp) >= hw:
                        if hw >= restriction.stop:  # only gaps were left
                            break
                    if time.monotonic() - last_progress > self.stall_timeout_s:
                        raise RuntimeError(
                            f"no data from {tp.topic}/{tp.partition} at offset {position} for "
                            f"{self.stall_timeout_s:.0f}s (range ends at {restriction.stop})")
                    continue
                out = flush()
                if out is not None:
                    yield out
                now = Timestamp.now() - Duration(seconds=self.idle_lag_s)
                if watermark.current_watermark() is None or now > watermark.current_watermark():
                    watermark.set_watermark(now)
                tracker.defer_remainder(Duration(seconds=1))
                return
            last_progress = time.monotonic()
            # One claim per poll, not per record: claiming the last offset of the poll means
            # owning every offset up to it. A failed claim means the restriction now ends
            # before it (its end, or a split by the runner): the records before that end are
            # still ours (a split only cuts after the last successful claim), the rest not.
            done = not tracker.try_claim(records[-1].offset)
            if done:
                stop = tracker.current_restriction().stop
                records = [r for r in records if r.offset < stop]
            size = 0
            for record in records:
                position = record.offset + 1
                size += len(record.value or b"") + len(record.key or b"")
                batch.append(KafkaRecord(record.topic, record.partition, record.offset,
                                         record.timestamp, record.key, record.value))
                if len(batch) >= self.batch_size:
                    yield flush()
            self.bytes_read.inc(size)
            if done:
                out = flush()
                if out is not None:
                    yield out
                return
            if not bounded and batch:
                # A producer clock far ahead must not drag the watermark into the future
                # (every later event would look late): never beyond now + the allowed skew.
                ts = min(Timestamp.of(batch[-1].timestamp_ms / 1000.0),
                         Timestamp.now() + Duration(seconds=self.max_clock_skew_s))
                if watermark.current_watermark() is None or ts > watermark.current_watermark():
                    watermark.set_watermark(ts)
        out = flush()
        if out is not None:
            yield out
        # Offsets at the end of the range that held no record (compaction, markers).
        if bounded and restriction.stop > restriction.start:
            last = restriction.stop - 1
            if position <= last:
                tracker.try_claim(last)


class ReadFromKafkaRanges(beam.PTransform):
    """PartitionRanges in, packed batches of KafkaRecord out (``kafka_io.unpack_records``)."""

    def __init__(self, config: KafkaConfig, ranges: list[PartitionRange], batch_size: int = 2000,
                 stall_timeout_s: float = 120.0):
        super().__init__()
        self.config = config
        self.ranges = ranges
        self.batch_size = batch_size
        self.stall_timeout_s = stall_timeout_s

    def expand(self, pbegin):
        return (pbegin
                | "PartitionRanges" >> beam.Create(self.ranges)
                | "ReadPartitionRanges" >> beam.ParDo(ReadPartitionRangesFn(
                    self.config, batch_size=self.batch_size,
                    stall_timeout_s=self.stall_timeout_s)))
