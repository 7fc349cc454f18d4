"""The cx360 micro-batch job: Kafka offset ranges -> decode/validate -> de-duplicate ->
windowed KPI components -> one transactional warehouse write; dead letters to Kafka and the
warehouse.

The logic (:class:`ProcessEvents`) takes a PCollection of record batches and knows nothing of
Kafka, so tests feed it with ``beam.Create``; :func:`build_pipeline` adds the I/O.

Run it through the command line (``cx360 run --once``), which plans the offset ranges, keeps
the batch ledger and prints the summary. Locally it runs on Beam's FnApiRunner with one worker
(the local runner drops a Splittable DoFn's deferred work with more); on Dataflow or Flink
pass ``--runner`` and the runner's options.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from cx360.schemas.registry import SchemaRegistry
from cx360.transforms.counts import count_events
from cx360.transforms.kpis import KpiComputer
from cx360.transforms.dead_letters import ProduceDeadLettersFn
from cx360.transforms.decode import DEAD_LETTER, DecodeEvents
from cx360.transforms.dedupe import EVENT_ID_ROWS, DeduplicateFn
from cx360.transforms.identity import redact_dead_letter
from cx360.transforms.kafka_io import KafkaConfig, PartitionRange
from cx360.transforms.kafka_source import ReadFromKafkaRanges
from cx360.transforms.warehouse.sink import WriteMicroBatch
from cx360.transforms.identity_steps import (DropErasedFn, StitchIdentities,
                                             touchpoint_rows)
from cx360.transforms.warehouse.spec import (BRANDS, DEAD_LETTERS, EVENT_COUNTS, EVENT_IDS,
                                             IDENTITY_TABLES, KPI_TABLES)

TABLES_WRITTEN = (EVENT_COUNTS.name, DEAD_LETTERS.name, EVENT_IDS.name,
                  *(spec.name for spec in KPI_TABLES),
                  *(spec.name for spec in IDENTITY_TABLES))


_SCORERS = threading.local()


def shared_scorer():
    """One SentimentScorer per worker thread (it keeps caches and is not thread-safe), reused
    across pipelines: loading the lexicons takes 1-2 s, and the local mode builds a new
    pipeline (new DoFn instances) for every micro-batch. A scorer holds no per-batch state,
    so reusing it cannot change a result."""
    scorer = getattr(_SCORERS, "scorer", None)
    if scorer is None:
        from cx360.transforms.sentiment import SentimentScorer

        scorer = _SCORERS.scorer = SentimentScorer()
    return scorer


class ComputeKpisFn(beam.DoFn):
    """A list of unique events -> ``(table, rows)`` parts of every KPI table. The sentiment
    scorer (lexicons) is loaded once per worker in setup()."""

    def __init__(self, window_sizes: tuple[int, ...], sliding: tuple[tuple[int, int], ...] = ()):
        self.window_sizes = window_sizes
        self.sliding = sliding
        self._computer = None

    def setup(self):
        self._computer = KpiComputer(self.window_sizes, shared_scorer(), self.sliding)

    def process(self, events: list[dict]):
        yield EVENT_COUNTS.name, count_events(events, self.window_sizes)
        for table, rows in self._computer.rows(events).items():
            if rows:
                yield table, rows
        touchpoints = touchpoint_rows(events, self._computer.scorer)
        if touchpoints:
            yield "customer_touchpoints", touchpoints


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """Everything one micro-batch needs; picklable (it travels to the workers)."""

    kafka: KafkaConfig
    registry: SchemaRegistry
    topics: dict                     # event kind -> topic (incl. 'dead_letter')
    warehouse_url: str
    batch_id: str
    now_ms: int                      # the batch's recorded clock (future-timestamp checks)
    window_sizes: tuple[int, ...] = (3600, 86400)
    sliding: tuple[tuple[int, int], ...] = ()   # (size, period) of sliding KPI windows
    buckets: int = 16
    read_batch_size: int = 2000
    max_future_ms: int = 15 * 60 * 1000
    stall_timeout_s: float = 120.0
    brands: tuple = ()               # rows of the brands dimension


class ProcessEvents(beam.PTransform):
    """Record batches in; ``(table name, rows)`` parts and dead letters out."""

    def __init__(self, settings: JobSettings):
        super().__init__()
        self.s = settings

    def expand(self, batches):
        s = self.s
        decoded = batches | "Decode" >> DecodeEvents(
            s.registry, s.topics, s.now_ms, buckets=s.buckets, batch_id=s.batch_id,
            max_future_ms=s.max_future_ms)
        deduped = (decoded.events
                   | "GroupByEventId" >> beam.GroupByKey()
                   | "Deduplicate" >> beam.ParDo(DeduplicateFn(s.warehouse_url)).with_outputs(
                       EVENT_ID_ROWS, main="events"))
        # Events of erased customers (`cx360 forget`) go no further than the ledger.
        kept = deduped.events | "DropErased" >> beam.ParDo(DropErasedFn(s.warehouse_url))
        kpis = kept | "ComputeKpis" >> beam.ParDo(ComputeKpisFn(s.window_sizes, s.sliding))
        identity = kept | "StitchIdentities" >> StitchIdentities(
            s.warehouse_url, s.batch_id, s.now_ms)
        brands = batches.pipeline | "Brands" >> beam.Create([(BRANDS.name, list(s.brands))])
        event_ids = deduped[EVENT_ID_ROWS] | "EventIdRows" >> beam.Map(
            lambda rows: (EVENT_IDS.name, rows))
        # The warehouse copy withholds bytes that look like an e-mail or phone number; the
        # dead-letter topic keeps the original for replay.
        dead_rows = (decoded[DEAD_LETTER]
                     | "DeadLetterRows" >> beam.Map(
                         lambda dead: (DEAD_LETTERS.name, [redact_dead_letter(dead)])))
        parts = (kpis, brands, event_ids, dead_rows, identity) | "TableParts" >> beam.Flatten()
        return {"parts": parts, "dead_letters": decoded[DEAD_LETTER], "events": deduped.events}


def build_pipeline(pipeline: beam.Pipeline, settings: JobSettings,
                   ranges: Sequence[PartitionRange], batches=None) -> None:
    """Add the whole job to ``pipeline``. ``batches`` replaces the Kafka read (tests)."""
    if batches is None:
        batches = pipeline | "ReadKafka" >> ReadFromKafkaRanges(
            settings.kafka, list(ranges), batch_size=settings.read_batch_size,
            stall_timeout_s=settings.stall_timeout_s)
    out = batches | "Process" >> ProcessEvents(settings)
    _ = out["parts"] | "WriteWarehouse" >> WriteMicroBatch(
        settings.warehouse_url, settings.batch_id, TABLES_WRITTEN)
    dl_topic = settings.topics.get("dead_letter")
    if dl_topic:
        _ = out["dead_letters"] | "DeadLettersToKafka" >> beam.ParDo(
            ProduceDeadLettersFn(settings.kafka, dl_topic, settings.registry))


def local_options(runner: str = "FnApiRunner", extra: Sequence[str] = ()) -> PipelineOptions:
    """Options for the local runner: one worker (more silently loses an SDF's deferred work
    on the FnApiRunner), and the FnApiRunner by default (the DirectRunner first tries to
    download the Prism runner)."""
    flags = [f"--runner={runner}", "--direct_num_workers=1",
             "--direct_running_mode=in_memory", *extra]
    return PipelineOptions(flags)
