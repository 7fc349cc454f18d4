"""The production streaming job (Dataflow, Flink): open-ended Kafka partitions -> decode and
validate -> lateness gate -> de-duplicate -> event-time windows with early, on-time and late
panes -> replace-upserts into the warehouse; dead letters to the warehouse and Kafka.

The same decoder, validation, dimensions and warehouse tables as the local micro-batch mode
(``cx360 run``, pipelines/microbatch.py); what differs is how time works (see
docs/streaming.md): windows fire on the watermark instead of at the end of a bounded batch,
late events update windows through late panes, and the sink replaces a window's row with its
newest pane instead of adding partial counts.

The logic (:class:`StreamingKpis`) takes a PCollection of record batches and knows nothing of
Kafka, so tests feed it from ``TestStream``; :func:`build_streaming_pipeline` adds the I/O.
Run it with ``cx360 stream --runner DataflowRunner -- --project=... --region=...
--temp_location=gs://...`` (or ``--runner FlinkRunner -- --flink_master=...``). It needs a
runner with real streaming semantics: the local runners cannot run it (the FnApiRunner has
only batch semantics; the BundleBasedDirectRunner cannot run the open-ended Kafka source).
Build the job without submitting it with ``--dry_run=True`` (see tests/test_streaming.py).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp

from cx360.schemas.registry import SchemaRegistry
from cx360.transforms.dead_letters import ProduceDeadLettersFn
from cx360.transforms.kpis import FACT_TABLES, event_facts, score_event
from cx360.transforms.identity import redact_dead_letter
from cx360.transforms.kafka_io import KafkaConfig, KafkaRecord, PartitionRange, unpack_records
from cx360.transforms.kafka_source import ReadPartitionRangesFn
from cx360.transforms.identity_stream import DropErasedStreamFn, StreamIdentities
from cx360.transforms.stream_events import StreamEvents
from cx360.transforms.stream_health import StreamHealth
from cx360.transforms.validate import DEFAULT_MAX_FUTURE_MS
from cx360.transforms.warehouse.panes import (DEAD_LETTERS, EVENT_COUNT_PANES, HEALTH_PANES,
                                              WEB_SESSIONS, UpsertPanes)
from cx360.transforms.warehouse.spec import BRANDS, CUSTOMER_TOUCHPOINTS
from cx360.transforms.windowed import (EVENT_COUNTS_KPI, WebSessions, WindowedComponents,
                                       WindowFamily, WindowedKpi, WindowPlan,
                                       table_label)

KAFKA_SOURCES = ("python", "java")


@dataclasses.dataclass(frozen=True)
class StreamingSettings:
    """Everything the streaming job needs; picklable (it travels to the workers).

    ``start_offsets`` maps (topic, partition) to the first offset to read; every partition of
    every event topic must be given (the caller decides: earliest, the group's committed
    offsets, ...). Durations are in seconds."""

    kafka: KafkaConfig
    registry: SchemaRegistry
    topics: dict                        # event kind -> topic (incl. 'dead_letter')
    warehouse_url: str
    start_offsets: dict = dataclasses.field(default_factory=dict)
    window_sizes: tuple[int, ...] = (3600, 86400)
    sliding: tuple[tuple[int, int], ...] = ()       # (size, period)
    session_gap_s: int | None = 1800
    allowed_lateness_s: int = 6 * 3600
    lateness_slack_s: int = 600
    early_firing_s: int = 60
    dedupe_horizon_s: int = 24 * 3600
    gate_step_s: int = 60
    gate_idle_steps: int = 60
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    kafka_source: str = "python"        # python: our SDF; java: Beam's ReadFromKafka
    group_id: str = "cx360"             # read positions are committed under it (lag tools)
    java_start_from: str = "committed"  # java source: committed | earliest | timestamp
    java_start_time_ms: int | None = None   # java source, java_start_from == 'timestamp'
    commit_interval_s: float = 10.0     # python source: commit read positions this often
    read_batch_size: int = 2000
    generation: int = dataclasses.field(default_factory=lambda: int(time.time() * 1000))
    fixed_now_ms: int | None = None     # tests only: the clock for future-timestamp checks
    identity: bool = True               # stitch identities, write customer_touchpoints
    identity_interval_s: int = 60       # event-time flush interval of the stitching state
    erasure_refresh_s: float = 60.0     # how often workers re-read the erasure list
    health_interval_s: int = 60         # pipeline_health rows per interval of Kafka time
    brands: tuple = ()                  # rows of the brands dimension (share of voice)

    def __post_init__(self):
        if self.kafka_source not in KAFKA_SOURCES:
            raise ValueError(f"kafka source must be one of {', '.join(KAFKA_SOURCES)}")
        _ = self.plan  # validates the windows

    @property
    def plan(self) -> WindowPlan:
        families = tuple(WindowFamily(size) for size in self.window_sizes) + tuple(
            WindowFamily(size, period) for size, period in self.sliding)
        return WindowPlan(families=families, session_gap_s=self.session_gap_s,
                          allowed_lateness_s=self.allowed_lateness_s,
                          lateness_slack_s=self.lateness_slack_s,
                          early_firing_s=self.early_firing_s)

    @property
    def event_topics(self) -> list[str]:
        return [topic for role, topic in self.topics.items() if role != "dead_letter"]

    def partition_ranges(self) -> list[PartitionRange]:
        """One open-ended range per topic-partition, from its start offset."""
        missing = sorted({t for t in self.event_topics}
                         - {t for t, _ in self.start_offsets})
        if missing:
            raise ValueError(f"no start offsets for topic(s) {', '.join(missing)}")
        return [PartitionRange(topic, partition, int(offset), None)
                for (topic, partition), offset in sorted(self.start_offsets.items())
                if topic in self.event_topics]


class ScoreSentimentFn(beam.DoFn):
    """Event -> ``(event, sentiment score or None)``: each event's text scored once, before
    any window (the components of every window family and the fact rows share the score).
    The lexicons are loaded once per worker thread in setup()."""

    def __init__(self):
        self._scorer = None

    def setup(self):
        from cx360.pipelines.job import shared_scorer

        self._scorer = shared_scorer()

    def process(self, event: dict):
        yield event, score_event(event, self._scorer)


class KpiFactsFn(beam.DoFn):
    """``(event, score)`` -> its fact rows (inbound_posts, brand_replies, web_events), each
    as a tagged output named after its table."""

    def process(self, scored: tuple[dict, dict | None]):
        for table, row in event_facts(*scored):
            yield beam.pvalue.TaggedOutput(table, row)


class StreamingKpis(beam.PTransform):
    """Record batches in (lists of KafkaRecord, stamped with their first record's Kafka
    timestamp); out: ``event_counts`` rows (global window) and ``event_counts_windows``
    ({family label: windowed rows}) for the fixed families, ``kpi_tables`` ({table: rows in
    the global window}: the CX KPI component tables per pane and the fact tables per event),
    ``web_sessions`` rows and ``web_sessions_windows``, ``events`` (unique, timestamped),
    ``scored`` (``(event, sentiment score or None)``, each text scored once) and
    ``dead_letters``."""

    def __init__(self, settings: StreamingSettings, drop_erased: bool = False):
        super().__init__()
        self.s = settings
        self.drop_erased = drop_erased

    def expand(self, batches):
        s = self.s
        plan = s.plan
        stream = batches | "Events" >> StreamEvents(
            s.registry, s.topics, plan, max_future_ms=s.max_future_ms,
            dedupe_horizon_s=s.dedupe_horizon_s, gate_step_s=s.gate_step_s,
            gate_idle_steps=s.gate_idle_steps, fixed_now_ms=s.fixed_now_ms)
        events = stream["events"]
        if self.drop_erased:
            # As in micro-batch mode: events of erased customers (`cx360 forget`) reach no
            # table, neither facts nor KPI components nor identity.
            events = events | "DropErased" >> beam.ParDo(
                DropErasedStreamFn(s.warehouse_url, s.erasure_refresh_s))
        out = {"events": events, "dead_letters": stream["dead_letters"]}
        scored = out["scored"] = events | "ScoreSentiment" >> beam.ParDo(ScoreSentimentFn())
        facts = scored | "KpiFacts" >> beam.ParDo(KpiFactsFn()).with_outputs(*FACT_TABLES)
        kpi_tables = {table: facts[table] for table in FACT_TABLES}
        if plan.families:
            kpi_tables.update(scored | "CxKpis" >> WindowedComponents(plan, s.generation))
        out["kpi_tables"] = kpi_tables
        if plan.fixed:
            counts = events | "EventCounts" >> WindowedKpi(
                EVENT_COUNTS_KPI, plan, s.generation)
            out["event_counts"] = counts.pop("rows")
            out["event_counts_windows"] = counts
        if plan.session_gap_s:
            sessions = events | "WebSessions" >> WebSessions(plan, s.generation)
            out["web_sessions"] = sessions["rows"]
            out["web_sessions_windows"] = sessions["sessions"]
        return out


# -- sources ----------------------------------------------------------------------------------

class ReadKafkaOpenEnded(beam.PTransform):
    """Our Splittable DoFn over open-ended ranges (stop=None): it defers its remainder when a
    partition has no data and then advances the watermark to ``now - idle_lag``, so an idle
    partition does not stall the windows. Batches of KafkaRecord out."""

    def __init__(self, config: KafkaConfig, ranges: Sequence[PartitionRange],
                 batch_size: int = 2000):
        super().__init__()
        if any(r.stop is not None for r in ranges):
            raise ValueError("the streaming source reads open-ended ranges (stop=None)")
        self.config = config
        self.ranges = list(ranges)
        self.batch_size = batch_size

    def expand(self, pbegin):
        return (pbegin
                | "PartitionRanges" >> beam.Create(self.ranges)
                | "ReadPartitions" >> beam.ParDo(ReadPartitionRangesFn(
                    self.config, batch_size=self.batch_size)))


def java_consumer_config(config: KafkaConfig, group_id: str) -> dict[str, str]:
    """Kafka consumer properties for Beam's Java KafkaIO. Note: a SASL password ends up in
    the job graph (as it does, pickled, for the Python source)."""
    props = {"bootstrap.servers": config.bootstrap_servers,
             "security.protocol": config.security_protocol,
             "group.id": group_id,
             "auto.offset.reset": "earliest",
             "enable.auto.commit": "false"}
    if config.security_protocol.startswith("SASL"):
        module = ("org.apache.kafka.common.security.plain.PlainLoginModule"
                  if config.sasl_mechanism == "PLAIN" else
                  "org.apache.kafka.common.security.scram.ScramLoginModule")
        props["sasl.mechanism"] = config.sasl_mechanism
        props["sasl.jaas.config"] = (f'{module} required username="{config.sasl_username}" '
                                     f'password="{config.sasl_password or ""}";')
    if config.security_protocol.endswith("SSL") and config.ssl_cafile:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = config.ssl_cafile
    return props


def java_kafka_read(settings: StreamingSettings):
    """Beam's ReadFromKafka (a Java cross-language transform), constructed but not applied:
    applying it expands it through a Java expansion service whose jar comes from Maven
    Central, which Dataflow/Flink deployments reach and these build machines do not.

    Start position: the consumer group's committed offsets (``committed``, committed again by
    KafkaIO when a bundle is finalized), the earliest offsets (``earliest``) or the first
    record at or after a time (``timestamp``). KafkaIO cannot start each partition at a given
    offset, so ``start_offsets`` does not apply to it."""
    from apache_beam.io.kafka import ReadFromKafka

    kwargs = {}
    if settings.java_start_from == "earliest":
        kwargs["start_read_time"] = 0
    elif settings.java_start_from == "timestamp" and settings.java_start_time_ms is not None:
        kwargs["start_read_time"] = settings.java_start_time_ms
    elif settings.java_start_from != "committed":
        raise ValueError("the java source starts from 'committed', 'earliest' or a timestamp")
    return ReadFromKafka(
        consumer_config=java_consumer_config(settings.kafka, settings.group_id),
        topics=settings.event_topics,
        with_metadata=True,
        timestamp_policy=ReadFromKafka.create_time_policy,
        commit_offset_in_finalize=settings.java_start_from == "committed",
        **kwargs)


def record_batch_from_row(row) -> beam.window.TimestampedValue:
    """A KafkaIO metadata row -> a one-record batch stamped with its Kafka timestamp."""
    record = KafkaRecord(row.topic, row.partition, row.offset, row.timestamp,
                         getattr(row, "key", None), getattr(row, "value", None))
    return beam.window.TimestampedValue([record], Timestamp(micros=record.timestamp_ms * 1000))


class ReadKafkaJava(beam.PTransform):
    """Beam's Java ReadFromKafka, as batches (of one record) like the Python source."""

    def __init__(self, settings: StreamingSettings):
        super().__init__()
        self.read = java_kafka_read(settings)

    def expand(self, pbegin):
        return (pbegin
                | "ReadFromKafka" >> self.read
                | "AsRecordBatches" >> beam.Map(record_batch_from_row))


class CommitReadPositionsFn(beam.DoFn):
    """Commits, under the group id, the offset after the last record read of each partition,
    at most every ``interval_s`` per worker: so that standard Kafka tools show the job's lag,
    and ``cx360 stream --start-from committed`` can resume reading where a job stopped.

    For monitoring only, never part of the exactly-once effect (that rests on the runner's
    checkpointed state): positions are committed once read, not once written to the
    warehouse, and a failed commit is logged and retried at the next interval."""

    def __init__(self, config: KafkaConfig, group_id: str, interval_s: float = 10.0):
        self.config = config
        self.group_id = group_id
        self.interval_s = interval_s
        self._positions: dict[tuple[str, int], int] = {}
        self._last_commit = 0.0

    def setup(self):
        self._positions = {}
        self._last_commit = time.monotonic()

    def process(self, batch: bytes | list[KafkaRecord]):
        positions = self._positions
        for record in unpack_records(batch):
            tp = (record.topic, record.partition)
            if record.offset + 1 > positions.get(tp, -1):
                positions[tp] = record.offset + 1
        return iter(())

    def _commit(self):
        import logging

        from cx360.transforms.kafka_io import commit_group_offsets

        if not self._positions:
            return
        try:
            commit_group_offsets(self.config, self.group_id, dict(self._positions))
            self._positions.clear()
        except Exception as exc:  # monitoring only: never fail the pipeline for it
            logging.getLogger(__name__).warning("committing read positions failed: %s", exc)
        self._last_commit = time.monotonic()

    def finish_bundle(self):
        if time.monotonic() - self._last_commit >= self.interval_s:
            self._commit()

    def teardown(self):
        self._commit()


# -- the job ----------------------------------------------------------------------------------

def build_streaming_pipeline(pipeline: beam.Pipeline, settings: StreamingSettings,
                             batches=None) -> dict:
    """Add the whole streaming job to ``pipeline``; ``batches`` replaces the Kafka read
    (tests). Returns the outputs of :class:`StreamingKpis`."""
    if batches is None:
        if settings.kafka_source == "java":
            batches = pipeline | "ReadKafka" >> ReadKafkaJava(settings)
        else:
            batches = pipeline | "ReadKafka" >> ReadKafkaOpenEnded(
                settings.kafka, settings.partition_ranges(), settings.read_batch_size)
            _ = batches | "CommitReadPositions" >> beam.ParDo(CommitReadPositionsFn(
                settings.kafka, settings.group_id, settings.commit_interval_s))
    out = batches | "StreamingKpis" >> StreamingKpis(settings, drop_erased=True)
    url = settings.warehouse_url
    if "event_counts" in out:
        _ = out["event_counts"] | "WriteEventCounts" >> UpsertPanes(
            url, EVENT_COUNT_PANES.name, "panes")
    if "web_sessions" in out:
        _ = out["web_sessions"] | "WriteWebSessions" >> UpsertPanes(
            url, WEB_SESSIONS.name, "sessions")
    for table, rows in out["kpi_tables"].items():
        _ = rows | f"Write{table_label(table)}" >> UpsertPanes(
            url, table, "replace" if table in FACT_TABLES else "panes")
    if settings.brands:
        _ = (pipeline
             | "Brands" >> beam.Create(list(settings.brands))
             | "WriteBrands" >> UpsertPanes(url, BRANDS.name, "replace"))
    plan = settings.plan
    health = (batches, out["dead_letters"]) | "StreamHealth" >> StreamHealth(
        settings.health_interval_s, plan.allowed_lateness_s + plan.lateness_slack_s,
        settings.generation, settings.fixed_now_ms)
    _ = health | "WriteHealth" >> UpsertPanes(url, HEALTH_PANES.name, "panes")
    out["health"] = health
    if settings.identity:
        identity = out["scored"] | "StreamIdentities" >> StreamIdentities(
            url, settings.identity_interval_s)
        _ = identity["touchpoints"] | "WriteTouchpoints" >> UpsertPanes(
            url, CUSTOMER_TOUCHPOINTS.name, "replace")
        out["identity"] = identity
    # The warehouse copy withholds e-mails/phones; the dead-letter topic keeps the original.
    _ = (out["dead_letters"]
         | "RedactDeadLetters" >> beam.Map(redact_dead_letter)
         | "WriteDeadLetters" >> UpsertPanes(url, DEAD_LETTERS.name, "replace"))
    dl_topic = settings.topics.get("dead_letter")
    if dl_topic:
        _ = out["dead_letters"] | "DeadLettersToKafka" >> beam.ParDo(
            ProduceDeadLettersFn(settings.kafka, dl_topic, settings.registry))
    return out


def prepare_warehouse(url: str) -> None:
    """Create every table the streaming job writes (with the pane columns), the others the
    KPI views read, and the views (kpi_*, customer_360, ...): the same views as in micro-batch
    mode, over the same tables. ``cx360 stream`` does this before it submits the job (the
    sink itself creates only the tables it writes)."""
    from cx360.transforms.warehouse import open_warehouse
    from cx360.transforms.warehouse.panes import PANE_TABLES, prepare
    from cx360.transforms.warehouse.spec import TABLES

    warehouse = open_warehouse(url)
    try:
        prepare(warehouse, PANE_TABLES.values())   # first: these add the pane columns
        warehouse.ensure_tables(TABLES.values())
        warehouse.ensure_views()
    finally:
        warehouse.close()


def streaming_options(runner: str, extra: Sequence[str] = ()):
    """Pipeline options for a streaming run on ``runner``, plus pass-through Beam flags."""
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = [f"--runner={runner}", "--streaming", *extra]
    return PipelineOptions(flags)
