"""The production streaming mode with real streaming semantics: TestStream on the
BundleBasedDirectRunner (early, on-time and late panes; too-late events to the dead letters;
sliding and session windows; the replace-upsert sink), the DataflowRunner dry run of the full
job, the Java Kafka source (constructed only) and the `cx360 stream` command.

Every expected value is worked out by hand from the timeline written above it. Times are
minutes on 2026-11-23 (UTC); ``T(10, 5)`` is 10:05. Settings used throughout unless a test says
otherwise: hourly windows, allowed lateness 30 min (+ 10 min GroupByKey slack), early panes 60 s
of processing time after a window's first new element, web sessions with a 30 min gap, the
lateness gate probing the watermark every 30 min. A batch is stamped with the Kafka timestamp
of its records, as the Kafka source does.
"""
from __future__ import annotations

import argparse
import time

import apache_beam as beam
import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from cx360.pipelines.streaming import (StreamingKpis, StreamingSettings,
                                       build_streaming_pipeline, java_kafka_read)
from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import SOCIAL, SURVEY, WEB, FileSchemaRegistry
from cx360.transforms.kafka_io import KafkaConfig, KafkaRecord
from cx360.transforms.warehouse import open_warehouse
from cx360.transforms.warehouse.panes import (EVENT_COUNT_PANES, WEB_SESSIONS, prepare,
                                              upsert)
from cx360.transforms.windowed import WindowPlan, WindowFamily

CODEC = AvroCodec(FileSchemaRegistry())
DAY = 1_795_392_000_000  # 2026-11-23 00:00:00 UTC, epoch ms
TOPICS = {"social": "cx.social", "web": "cx.web", "survey": "cx.survey"}


def T(hour: int, minute: int = 0) -> int:
    """Epoch ms of hour:minute on the test day."""
    return DAY + (hour * 60 + minute) * 60_000


def W(hour: int, minute: int = 0) -> Timestamp:
    """The same instant as a Beam timestamp."""
    return Timestamp(micros=T(hour, minute) * 1000)


def post(event_id: str, at_ms: int) -> bytes:
    return CODEC.encode(SOCIAL, {
        "event_id": event_id, "event_type": "post", "event_time": at_ms,
        "platform": "instagram", "brand": "Nordwind", "author_handle": "@kim",
        "post_id": event_id})


def page_view(event_id: str, at_ms: int, cookie: str) -> bytes:
    return CODEC.encode(WEB, {
        "event_id": event_id, "event_type": "page_view", "event_time": at_ms,
        "brand": "Kaffeeklatsch", "session_id": f"s-{cookie}", "cookie_id": cookie,
        "device": "mobile"})


class Log:
    """Appends records to partitions, numbering offsets like Kafka does."""

    def __init__(self):
        self.next_offset = {}

    def batch(self, kafka_ms: int, *values: bytes, topic: str = "cx.social",
              partition: int = 0) -> TimestampedValue:
        records = []
        for value in values:
            offset = self.next_offset.get((topic, partition), 0)
            self.next_offset[(topic, partition)] = offset + 1
            records.append(KafkaRecord(topic, partition, offset, kafka_ms, b"key", value))
        return TimestampedValue(records, Timestamp(micros=kafka_ms * 1000))


def settings(**overrides) -> StreamingSettings:
    values = dict(kafka=KafkaConfig(), registry=FileSchemaRegistry(), topics=TOPICS,
                  warehouse_url="duckdb:/nonexistent/never-opened.duckdb",
                  window_sizes=(3600,), session_gap_s=1800, allowed_lateness_s=1800,
                  lateness_slack_s=600, early_firing_s=60, gate_step_s=1800, gate_idle_steps=2,
                  generation=1, fixed_now_ms=T(23, 59))
    values.update(overrides)
    return StreamingSettings(**values)


def streaming_pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner="BundleBasedDirectRunner",
                        options=StandardOptions(streaming=True))


def count_pane(row: dict) -> tuple:
    return row["brand"], row["events"], row["pane_timing"], row["pane_index"]


def session_pane(row: dict) -> tuple:
    return row["cookie_id"], row["events"], row["pane_timing"]


# -- one hourly window through its whole life ---------------------------------------------------
#
# watermark 10:00
# batch @10:05  p1 (10:01), p2 (10:04)     -> processing time +61 s: EARLY pane, 2 events
# batch @10:30  p3 (10:20)
# watermark 11:00                          -> ON_TIME pane, 3 events
# batch @11:10  p4 (10:50)                 -> late but before 11:00 + 30 min: LATE pane, 4
# batch @11:12  p1 again (a re-send)       -> duplicate: dropped, no pane
# batch @11:35  p5 (10:58), partition 1    -> reached Kafka after the deadline 11:30: too_late
# watermark 11:45
# batch @11:25  p6 (10:59)                 -> on time by Kafka, but the watermark (11:45) is
#                                             past its deadline 11:30: too_late. The gate
#                                             knows: its 30-min probes on partition 0 fired
#                                             at 10:30 and 11:00 (watermark 11:00), then 11:30
#                                             (watermark 11:45), so its bound is 11:30.
#
# Offsets: partition 0 holds p1 p2 | p3 | p4 | p1 | p6 = 0..5; partition 1 holds p5 = 0.
# With ``bad=True`` partition 2 also gets, at 10:06, a post stamped the next day at 00:30
# (31 min after the clock of these tests, 23:59: more than the 15 min allowed skew) and a
# value that is no event at all.

def social_stream(log: Log, bad: bool = False, topic: str = "cx.social") -> EventStream:
    p1 = post("p1", T(10, 1))
    stream = (EventStream()
              .advance_watermark_to(W(10))
              .add_elements([log.batch(T(10, 5), p1, post("p2", T(10, 4)), topic=topic)]))
    if bad:
        stream = stream.add_elements([log.batch(T(10, 6), post("p9", T(24, 30)), b"hello",
                                                partition=2, topic=topic)])
    return (stream
            .advance_processing_time(61)
            .add_elements([log.batch(T(10, 30), post("p3", T(10, 20)), topic=topic)])
            .advance_watermark_to(W(11))
            .add_elements([log.batch(T(11, 10), post("p4", T(10, 50)), topic=topic)])
            .add_elements([log.batch(T(11, 12), p1, topic=topic)])
            .add_elements([log.batch(T(11, 35), post("p5", T(10, 58)), partition=1,
                                     topic=topic)])
            .advance_watermark_to(W(11, 45))
            .add_elements([log.batch(T(11, 25), post("p6", T(10, 59)), topic=topic)])
            .advance_watermark_to_infinity())


def test_early_on_time_and_late_panes_carry_the_running_total():
    with streaming_pipeline() as p:
        out = p | social_stream(Log()) | StreamingKpis(settings(session_gap_s=None))
        panes = out["event_counts_windows"]["Fixed1h"] | beam.Map(count_pane)
        assert_that(panes, equal_to_per_window({
            IntervalWindow(W(10), W(11)): [
                ("Nordwind", 2, "EARLY", 0),
                ("Nordwind", 3, "ON_TIME", 1),
                ("Nordwind", 4, "LATE", 2),
            ]}), use_global_window=False)


def test_too_late_events_are_dead_letters_and_not_counted():
    with streaming_pipeline() as p:
        out = p | social_stream(Log(), bad=True) | StreamingKpis(settings(session_gap_s=None))
        dead = out["dead_letters"] | beam.Map(
            lambda d: (d["dead_letter_id"], d["stage"], d["reason"], d["detail"]))
        assert_that(dead, equal_to([
            ("cx.social/1/0", "window", "too_late",
             "event_time 2026-11-23T10:58:00Z is later than the allowed lateness (1800 s after "
             "the end of its window): its deadline 2026-11-23T11:30:00Z had passed when it "
             "arrived (the record reached Kafka at 2026-11-23T11:35:00Z)"),
            ("cx.social/0/5", "window", "too_late",
             "event_time 2026-11-23T10:59:00Z is later than the allowed lateness (1800 s after "
             "the end of its window): its deadline 2026-11-23T11:30:00Z had passed when it "
             "arrived (the watermark had reached 2026-11-23T11:30:00Z)"),
            # Rejected before any window: a future timestamp cannot hold a window open.
            ("cx.social/2/0", "validate", "future_timestamp",
             "event_time is 31 min in the future (allowed skew 15 min)"),
            ("cx.social/2/1", "decode", "undecodable",
             "neither Confluent wire format nor a JSON object"),
        ]), label="DeadLetters")
        # p5 and p6 never reach a window: the last pane stays at 4 (p1..p4).
        final = (out["event_counts"]
                 | beam.Filter(lambda r: r["pane_timing"] == "LATE")
                 | beam.Map(lambda r: (r["window_start"], r["events"])))
        assert_that(final, equal_to([(T(10), 4)]), label="NotCounted")


# -- sliding windows: 1 h every 30 min -----------------------------------------------------------
#
# batch @10:41  p1 (10:10), p2 (10:40);  watermark 11:00;  batch @11:11  p3 (11:10)
# p1 is in [09:30, 10:30) and [10:00, 11:00); p2 in [10:00, 11:00) and [10:30, 11:30);
# p3 in [10:30, 11:30) and [11:00, 12:00). No processing-time advance: on-time panes only.
# Sliding windows feed the sliding KPI tables (as in micro-batch mode), not event_counts: the
# posts (no text, by a customer) are one mention and one UGC post each.

def test_sliding_windows():
    log = Log()
    stream = (EventStream()
              .advance_watermark_to(W(10))
              .add_elements([log.batch(T(10, 41), post("p1", T(10, 10)), post("p2", T(10, 40)))])
              .advance_watermark_to(W(11))
              .add_elements([log.batch(T(11, 11), post("p3", T(11, 10)))])
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        out = p | stream | StreamingKpis(settings(
            window_sizes=(), sliding=((3600, 1800),), session_gap_s=None))
        assert "event_counts" not in out
        assert set(out["kpi_tables"]) == {"social_kpis_sliding", "survey_kpis_sliding",
                                          "inbound_posts", "brand_replies", "web_events"}
        panes = out["kpi_tables"]["social_kpis_sliding"] | beam.Map(
            lambda r: (r["window_start"], r["window_end"], r["window_seconds"],
                       r["window_period_seconds"], r["brand"], r["language"], r["mentions"],
                       r["ugc_posts"], r["pane_timing"], r["pane_index"]))
        assert_that(panes, equal_to([
            (T(9, 30), T(10, 30), 3600, 1800, "Nordwind", "und", 1, 1, "ON_TIME", 0),
            (T(10), T(11), 3600, 1800, "Nordwind", "und", 2, 2, "ON_TIME", 0),
            (T(10, 30), T(11, 30), 3600, 1800, "Nordwind", "und", 2, 2, "ON_TIME", 0),
            (T(11), T(12), 3600, 1800, "Nordwind", "und", 1, 1, "ON_TIME", 0),
        ]))


# -- web sessions (30 min gap), per brand and cookie -----------------------------------------------
#
# watermark 10:00
# batch @10:12  w1 c1 (10:00), w2 c1 (10:10), w4 c2 (10:05)
#   processing time +61 s -> EARLY: c1 [10:00, 10:40) 2 events; c2 [10:05, 10:35) 1 event
# batch @10:51  w3 c1 (10:50): a new session, 40 min after w2
# watermark 11:25 -> ON_TIME: c1 [10:00, 10:40) 2; c2 [10:05, 10:35) 1; c1 [10:50, 11:20) 1
# batch @11:26  w5 c1 (10:30): late, before its deadline (11:00 + 30 min); it bridges both c1
#   sessions -> one session [10:00, 11:20) with 4 events, fired LATE (the window is past)
#
# For the sink test, the web events' hourly row [10:00, 11:00) ends at 5 events (LATE).

def web_stream(log: Log) -> EventStream:
    return (EventStream()
            .advance_watermark_to(W(10))
            .add_elements([log.batch(T(10, 12), page_view("w1", T(10, 0), "c1"),
                                     page_view("w2", T(10, 10), "c1"),
                                     page_view("w4", T(10, 5), "c2"), topic="cx.web")])
            .advance_processing_time(61)
            .add_elements([log.batch(T(10, 51), page_view("w3", T(10, 50), "c1"),
                                     topic="cx.web")])
            .advance_watermark_to(W(11, 25))
            .add_elements([log.batch(T(11, 26), page_view("w5", T(10, 30), "c1"),
                                     topic="cx.web")])
            .advance_watermark_to_infinity())


def test_session_windows_fire_early_on_time_and_merge_late():
    with streaming_pipeline() as p:
        out = p | web_stream(Log()) | StreamingKpis(settings())
        panes = out["web_sessions_windows"] | beam.Map(session_pane)
        assert_that(panes, equal_to_per_window({
            IntervalWindow(W(10, 0), W(10, 40)): [("c1", 2, "EARLY"), ("c1", 2, "ON_TIME")],
            IntervalWindow(W(10, 5), W(10, 35)): [("c2", 1, "EARLY"), ("c2", 1, "ON_TIME")],
            IntervalWindow(W(10, 50), W(11, 20)): [("c1", 1, "ON_TIME")],
            IntervalWindow(W(10, 0), W(11, 20)): [("c1", 4, "LATE")],
        }), use_global_window=False)


# -- the replace-upsert sink ---------------------------------------------------------------------

# Both timelines above in one stream (same batches, same watermarks, interleaved):
#
# watermark 10:00; web batch @10:12 (w1 w2 w4); social batch @10:05 (p1 p2)
# processing time +61 s          -> EARLY: social 2, web 3; sessions c1 2, c2 1
# social @10:30 (p3); web @10:51 (w3)
# watermark 11:00                -> ON_TIME: social 3, web 4; sessions c1 [10:00, 10:40) 2,
#                                   c2 1
# social @11:10 (p4)             -> LATE: social 4;  social @11:12 (p1 again): duplicate
# social @11:35 (p5, partition 1): too_late
# watermark 11:25                -> ON_TIME: session c1 [10:50, 11:20) 1
# web @11:26 (w5)                -> LATE: web 5; sessions of c1 merge: [10:00, 11:20) 4
# watermark 11:45; social @11:25 (p6): too_late
#
# What the warehouse must hold at the end: every row at its newest pane.

def sink_stream(log: Log) -> EventStream:
    """The timeline above (also run into PostgreSQL and BigQuery: tests/test_streaming_sink.py)."""
    p1 = post("p1", T(10, 1))
    return (EventStream()
              .advance_watermark_to(W(10))
              .add_elements([log.batch(T(10, 12), page_view("w1", T(10, 0), "c1"),
                                       page_view("w2", T(10, 10), "c1"),
                                       page_view("w4", T(10, 5), "c2"), topic="cx.web")])
              .add_elements([log.batch(T(10, 5), p1, post("p2", T(10, 4)))])
              .advance_processing_time(61)
              .add_elements([log.batch(T(10, 30), post("p3", T(10, 20)))])
              .add_elements([log.batch(T(10, 51), page_view("w3", T(10, 50), "c1"),
                                       topic="cx.web")])
              .advance_watermark_to(W(11))
              .add_elements([log.batch(T(11, 10), post("p4", T(10, 50)))])
              .add_elements([log.batch(T(11, 12), p1)])
              .add_elements([log.batch(T(11, 35), post("p5", T(10, 58)), partition=1)])
              .advance_watermark_to(W(11, 25))
              .add_elements([log.batch(T(11, 26), page_view("w5", T(10, 30), "c1"),
                                       topic="cx.web")])
              .advance_watermark_to(W(11, 45))
              .add_elements([log.batch(T(11, 25), post("p6", T(10, 59)))])
              .advance_watermark_to_infinity())


def test_replace_upsert_sink_keeps_exactly_the_last_pane(tmp_path):
    path = tmp_path / "stream.duckdb"
    with streaming_pipeline() as p:
        build_streaming_pipeline(p, settings(warehouse_url=f"duckdb:{path}"),
                                 batches=p | sink_stream(Log()))

    con = duckdb.connect(str(path))
    try:
        counts = con.execute(
            "SELECT epoch_ms(window_start), epoch_ms(window_end), window_seconds, topic, brand, "
            "events, pane_timing, pane_index, generation FROM event_counts ORDER BY topic"
        ).fetchall()
        sessions = con.execute(
            "SELECT cookie_id, epoch_ms(session_start), epoch_ms(session_end), "
            "epoch_ms(last_event_at), events FROM stream_web_sessions ORDER BY cookie_id"
        ).fetchall()
        per_day = con.execute("SELECT brand, CAST(session_day AS VARCHAR), sessions, events "
                              "FROM stream_web_session_counts").fetchall()
        dead = con.execute("SELECT dead_letter_id, stage, reason FROM dead_letters "
                           "ORDER BY dead_letter_id").fetchall()
    finally:
        con.close()
    assert counts == [
        (T(10), T(11), 3600, "cx.social", "Nordwind", 4, "LATE", 2, 1),
        (T(10), T(11), 3600, "cx.web", "Kaffeeklatsch", 5, "LATE", 2, 1),
    ]
    # c1's two sessions were merged by w5: the merged row replaced both.
    assert sessions == [("c1", T(10, 0), T(11, 20), T(10, 50), 4),
                        ("c2", T(10, 5), T(10, 35), T(10, 5), 1)]
    assert per_day == [("Kaffeeklatsch", "2026-11-23", 2, 5)]
    assert dead == [("cx.social/0/5", "window", "too_late"),
                    ("cx.social/1/0", "window", "too_late")]


def test_replace_upserts_ignore_older_panes_whatever_the_write_order(tmp_path):
    warehouse = open_warehouse(f"duckdb:{tmp_path / 'w.duckdb'}")
    try:
        prepare(warehouse, [EVENT_COUNT_PANES, WEB_SESSIONS])

        def count_row(events, pane_index, generation=1, timing="LATE"):
            return {"window_seconds": 3600, "window_start": T(10), "window_end": T(11),
                    "event_kind": "social", "topic": "cx.social", "event_type": "post",
                    "brand": "Nordwind", "channel": "instagram", "events": events,
                    "pane_index": pane_index, "pane_timing": timing, "generation": generation}

        upsert(warehouse, EVENT_COUNT_PANES, [count_row(4, 2)], "panes")
        upsert(warehouse, EVENT_COUNT_PANES, [count_row(3, 1, timing="ON_TIME")], "panes")
        assert warehouse.query("SELECT events, pane_index FROM event_counts") == [(4, 2)]
        upsert(warehouse, EVENT_COUNT_PANES, [count_row(4, 2)], "panes")  # a retried write
        assert warehouse.query("SELECT events, pane_index FROM event_counts") == [(4, 2)]
        # A new job (generation 2) starts its pane indexes again and replaces the old rows.
        upsert(warehouse, EVENT_COUNT_PANES, [count_row(5, 0, generation=2)], "panes")
        assert warehouse.query("SELECT events, generation FROM event_counts") == [(5, 2)]

        def session(start, end, events):
            return {"brand": "Kaffeeklatsch", "cookie_id": "c1", "session_start": start,
                    "session_end": end, "last_event_at": end - 1_800_000, "events": events,
                    "pane_index": 0, "pane_timing": "LATE", "generation": 1}

        merged = session(T(10, 0), T(11, 20), 4)
        upsert(warehouse, WEB_SESSIONS, [session(T(10, 0), T(10, 40), 2),
                                         session(T(10, 50), T(11, 20), 1)], "sessions")
        upsert(warehouse, WEB_SESSIONS, [merged], "sessions")
        upsert(warehouse, WEB_SESSIONS, [session(T(10, 50), T(11, 20), 1)], "sessions")  # stale
        assert warehouse.query(
            "SELECT epoch_ms(session_start), epoch_ms(session_end), events FROM stream_web_sessions"
        ) == [(T(10, 0), T(11, 20), 4)]
        assert warehouse.query("SELECT sessions FROM stream_web_session_counts") == [(1,)]
    finally:
        warehouse.close()


def test_deadline_is_the_earliest_window_end_plus_allowed_lateness():
    plan = WindowPlan(families=(WindowFamily(3600), WindowFamily(86400)), session_gap_s=1800,
                      allowed_lateness_s=1800, lateness_slack_s=600)
    # A post at 10:45: hourly window ends 11:00 -> deadline 11:30. A page view at 10:15: its
    # session window [10:15, 10:45) ends before the hour does -> deadline 11:15.
    assert plan.deadline("social", W(10, 45)) == W(11, 30)
    assert plan.deadline("web", W(10, 15)) == W(11, 15)
    # The GroupByKeys accept it until the daily window's end + 30 min + 10 min slack.
    assert plan.last_deadline("social", W(10, 45)) == W(24, 40)
    assert plan.gbk_allowed_lateness_s == 2400
    # Fixed and sliding windows of one size may be combined (as with `cx360 run`): only the
    # fixed ones are event_counts rows, the sliding ones go to the *_sliding KPI tables.
    both = WindowPlan(families=(WindowFamily(3600), WindowFamily(3600, 900)))
    assert both.fixed == (WindowFamily(3600),)
    assert both.sliding == (WindowFamily(3600, 900),)


# -- DataflowRunner dry run -----------------------------------------------------------------------

DRY_RUN_FLAGS = ["--dry_run=True", "--no_auth", "--sdk_location=container",
                 "--project=cx360-demo", "--region=europe-west3", "--job_name=cx360-dry",
                 "--temp_location=gs://cx360-dry/tmp",
                 "--staging_location=gs://cx360-dry/staging", "--streaming"]


def _require_gcp_extra():
    import importlib

    try:
        importlib.import_module("apache_beam.runners.dataflow.internal.apiclient")
    except ImportError as exc:
        pytest.fail("the DataflowRunner dry run needs Beam's [gcp] extra: "
                    f"pip install 'apache-beam[gcp]==2.77.0' ({exc})")


def test_dataflow_dry_run_builds_the_full_streaming_job():
    _require_gcp_extra()
    full = settings(
        kafka=KafkaConfig(bootstrap_servers="kafka-1:9092,kafka-2:9092"),
        topics=dict(TOPICS, dead_letter="cx.dead-letter"),
        warehouse_url="duckdb:/nonexistent/never-opened.duckdb",
        start_offsets={(t, p): 0 for t in TOPICS.values() for p in range(3)},
        window_sizes=(3600, 86400), sliding=((3600 * 4, 3600),), allowed_lateness_s=6 * 3600,
        gate_step_s=60, gate_idle_steps=60, fixed_now_ms=None)
    started = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DataflowRunner",
                                                      *DRY_RUN_FLAGS]))
    build_streaming_pipeline(pipeline, full)
    result = pipeline.run()
    elapsed = time.monotonic() - started
    print(f"DataflowRunner dry run: job built in {elapsed:.2f} s")

    job = result.job
    assert job.proto.type == 2  # JOB_TYPE_STREAMING
    transforms = job.proto_pipeline.components.transforms.values()
    names = {t.unique_name for t in transforms}
    for step in ("ReadKafka/ReadPartitions", "StreamingKpis/Events/DecodeAndValidate",
                 "StreamingKpis/Events/LatenessGate", "StreamingKpis/Events/DeduplicateByEventId",
                 "StreamingKpis/EventCounts/Fixed1hWindows",
                 "StreamingKpis/EventCounts/Fixed1dCombine",
                 "StreamingKpis/ScoreSentiment", "StreamingKpis/KpiFacts",
                 "StreamingKpis/CxKpis/Fixed1hWindows", "StreamingKpis/CxKpis/Fixed1dCombine",
                 "StreamingKpis/CxKpis/Sliding4hEvery1hWindows",
                 "StreamingKpis/CxKpis/Sliding4hEvery1hCombine",
                 "WriteSocialKpis/Upsert", "WriteShareOfVoiceCounts/Upsert",
                 "WriteAspectMentions/Upsert", "WriteSurveyKpis/Upsert",
                 "WriteSocialKpisSliding/Upsert", "WriteSurveyKpisSliding/Upsert",
                 "WriteInboundPosts/Upsert", "WriteBrandReplies/Upsert",
                 "WriteWebEvents/Upsert",
                 "StreamingKpis/WebSessions/SessionWindows", "WriteEventCounts/Upsert",
                 "WriteWebSessions/Upsert", "WriteDeadLetters/Upsert", "DeadLettersToKafka",
                 "CommitReadPositions", "StreamingKpis/DropErased",
                 "StreamIdentities/Stitch", "WriteTouchpoints/Upsert",
                 "StreamHealth/PerPartition", "WriteHealth/Upsert"):
        assert step in names, step
    urns = {t.spec.urn for t in transforms}
    assert "beam:transform:combine_per_key:v1" in urns
    windowed = [w for w in job.proto_pipeline.components.windowing_strategies.values()
                if w.window_fn.urn != "beam:window_fn:global_windows:v1"]
    assert {w.window_fn.urn for w in windowed} == {
        "beam:window_fn:fixed_windows:v1", "beam:window_fn:sliding_windows:v1",
        "beam:window_fn:session_windows:v1"}
    # Allowed lateness at the GroupByKeys: 6 h + 10 min slack; accumulating panes.
    assert {w.allowed_lateness for w in windowed} == {(6 * 3600 + 600) * 1000}
    assert {w.accumulation_mode for w in windowed} == {2}  # ACCUMULATING
    assert elapsed < 60


def test_java_kafka_source_is_constructed_with_the_job_settings():
    from apache_beam.coders.row_coder import RowCoder
    from apache_beam.io.kafka import ReadFromKafka
    from apache_beam.portability.api import external_transforms_pb2

    read = java_kafka_read(settings(kafka=KafkaConfig(bootstrap_servers="kafka-1:9092"),
                                    kafka_source="java", group_id="cx360-prod"))
    assert isinstance(read, ReadFromKafka)
    payload = external_transforms_pb2.ExternalConfigurationPayload.FromString(read._payload)
    config = RowCoder(payload.schema).decode(payload.payload)
    assert config.topics == ["cx.social", "cx.web", "cx.survey"]
    assert config.consumer_config == {
        "bootstrap.servers": "kafka-1:9092", "security.protocol": "PLAINTEXT",
        "group.id": "cx360-prod", "auto.offset.reset": "earliest",
        "enable.auto.commit": "false"}
    assert config.timestamp_policy == "CreateTime"
    assert config.commit_offset_in_finalize is True
    assert read._urn == "beam:transform:org.apache.beam:kafka_read_with_metadata:v1"


# -- the command ----------------------------------------------------------------------------------

def _stream_args(*argv: str) -> argparse.Namespace:
    from cx360.pipelines import stream_cmd

    parser = argparse.ArgumentParser(prog="cx360")
    stream_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["stream", *argv])


def test_stream_command_starts_from_committed_offsets_and_dry_runs(kafka, topics, capsys):
    from cx360.pipelines.cli import UserError
    from cx360.pipelines.stream_cmd import build_settings, run
    from cx360.transforms.kafka_io import commit_group_offsets
    from kafka_helpers import produce

    produce(kafka, topics["social"], [(b"k", post(f"p{i}", T(10, i))) for i in range(5)],
            partition=0, timestamps_ms=[T(10, i) for i in range(5)])
    commit_group_offsets(kafka, "cx360-test", {(topics["social"], 0): 3})
    argv = ["--bootstrap-servers", kafka.bootstrap_servers, "--group-id", "cx360-test",
            "--social-topic", topics["social"], "--web-topic", topics["web"],
            "--survey-topic", topics["survey"], "--dead-letter-topic", topics["dead_letter"],
            "--windows", "1h,1d", "--sliding", "4h/1h", "--allowed-lateness", "2h",
            "--early-firing", "30s", "--dedupe-horizon", "48h", "--runner", "DataflowRunner"]

    built = build_settings(_stream_args(*argv))
    assert built.start_offsets[(topics["social"], 0)] == 3
    assert {o for tp, o in built.start_offsets.items() if tp != (topics["social"], 0)} == {0}
    assert len(built.start_offsets) == 9
    assert (built.window_sizes, built.sliding, built.allowed_lateness_s, built.early_firing_s,
            built.dedupe_horizon_s) == ((3600, 86400), ((14400, 3600),), 7200, 30, 172800)
    assert "no committed offsets" in capsys.readouterr().err
    # From a time: the first record stamped 10:02 or later is offset 2.
    from_time = build_settings(_stream_args(*argv, "--start-from", "2026-11-23T10:02:00Z"))
    assert from_time.start_offsets[(topics["social"], 0)] == 2

    _require_gcp_extra()
    assert run(_stream_args(*argv, "--", *DRY_RUN_FLAGS[:-1])) == 0
    assert "dry run: DataflowRunner job built" in capsys.readouterr().out

    with pytest.raises(UserError, match="cx360 run"):
        run(_stream_args(*argv[:-2], "--runner", "DirectRunner"))
    with pytest.raises(UserError, match="--sliding"):
        build_settings(_stream_args(*argv[:-2], "--sliding", "1h"))


# -- identity stitching in the streaming job ---------------------------------------------------
#
# The hand-worked scenario of tests/test_identity.py (Anna on three channels, a household tablet
# shared with Bob, Anna's instagram handle linked to her account only later), as a stream. Times
# are minutes after 06:00 on 2026-11-20; flush interval 60 s of event time.
#
# watermark 06:00
# batches @06:45: web w1-w8 (06:00-06:32), social p1 (06:20), survey v1 (06:40)
# watermark 06:50   -> one flush (timer 06:02, the earliest interval end) stitches every
#                      link so far: Anna = {acct, phone cookie, e-mail, phone}; the tablet is
#                      linked to two accounts: shared, alone; Bob = {acct, e-mail}; the
#                      handle has no link yet (its own profile).
# batch @07:05: w9 account_link (event time 06:15: LATE, behind the watermark, within the
#               allowed lateness: hourly window 06-07 + 30 min > Kafka time 07:05)
# watermark 07:10   -> its timer (06:16) is behind the watermark and fires: links acct-laptop
#                      cookie and acct-handle; two map rows (laptop, handle -> Anna), no merge
#                      (the handle had no stored key), history re-attributed by the view.

def _identity_stream(log: Log) -> EventStream:
    import test_identity as ti

    def encoded(kind, rows):
        schema = {"web": WEB, "social": SOCIAL, "survey": SURVEY}[kind]
        return [CODEC.encode(schema, r) for r in rows]

    late_link = dict(ti.BATCH2["web"][0], event_time=ti.at(15))
    return (EventStream()
            .advance_watermark_to(Timestamp(micros=ti.at(0) * 1000))
            .add_elements([log.batch(ti.at(45), *encoded("web", ti.BATCH1["web"]),
                                     topic="cx.web")])
            .add_elements([log.batch(ti.at(45), *encoded("social", ti.BATCH1["social"]))])
            .add_elements([log.batch(ti.at(45), *encoded("survey", ti.BATCH1["survey"]),
                                     topic="cx.survey")])
            .advance_watermark_to(Timestamp(micros=ti.at(50) * 1000))
            .add_elements([log.batch(ti.at(65), *encoded("web", [late_link]), topic="cx.web")])
            .advance_watermark_to(Timestamp(micros=ti.at(70) * 1000))
            .advance_watermark_to_infinity()), late_link


def test_streaming_stitches_identities_like_micro_batch_mode(tmp_path):
    import test_identity as ti
    from cx360.transforms.identity import (DEMO_KEY, IdentityRules, MemoryGraphStore,
                                           Pseudonymiser, event_links, implicit_key, stitch)
    from cx360.transforms.warehouse.spec import TABLES

    path = tmp_path / "stream.duckdb"
    stream, late_link = _identity_stream(Log())
    with streaming_pipeline() as p:
        out = build_streaming_pipeline(p, settings(warehouse_url=f"duckdb:{path}",
                                                   fixed_now_ms=ti.at(24 * 60)),
                                       batches=p | stream)
        from apache_beam.transforms import trigger

        flushes = (out["identity"]["stitched"]
                   | "OneFinalPane" >> beam.WindowInto(
                       beam.window.GlobalWindows(), trigger=trigger.AfterWatermark(),
                       accumulation_mode=trigger.AccumulationMode.DISCARDING)
                   | "Flushes" >> beam.CombineGlobally(
                       beam.combiners.ToListCombineFn()).without_defaults()
                   | "Sorted" >> beam.Map(sorted))
        first, late = f"stream-{ti.at(2)}", f"stream-{ti.at(16)}"
        assert_that(flushes, equal_to([sorted([
            # flush 06:02 (watermark 06:50): 6 links (see tests/test_identity.py), 7 map rows
            (first, "identity_links", 6), (first, "identity_merges", 0),
            (first, "identity_map", 7),
            # flush 06:16 (the late link): 2 links, laptop and handle join Anna, no merge
            (late, "identity_links", 2), (late, "identity_merges", 0), (late, "identity_map", 2)
        ])]))

    pseudo = Pseudonymiser(DEMO_KEY)
    con = duckdb.connect(str(path))
    try:
        streamed = sorted(con.execute("SELECT identifier, id_type, customer_key, shared "
                                      "FROM identity_map").fetchall())
        links = sorted(con.execute("SELECT id_a, id_b, epoch_ms(first_seen), event_id "
                                   "FROM identity_links").fetchall())
    finally:
        con.close()
    anna = ["acct:" + ti.ANNA, "ck:ck-anna-laptop", "ck:ck-anna-phone",
            "em:" + pseudo.email("anna.k@example.org"), "ph:" + pseudo.phone("0151 2345678"),
            "sh:instagram:@anna_k"]
    assert sorted(i for i, _, k, _ in streamed if k == ti.ANNA) == sorted(anna)
    assert [(k, s) for i, _, k, s in streamed if i == "ck:ck-tablet"] == [
        (implicit_key("ck:ck-tablet"), True)]
    assert sorted(i for i, _, k, _ in streamed if k == ti.BOB) == sorted(
        ["acct:" + ti.BOB, "em:" + pseudo.email("bob@example.net")])
    assert len(streamed) == 9 and len(links) == 8

    # Micro-batch mode on the same events (two batches: the link arrives in the second).
    store = MemoryGraphStore()
    for i, batch in enumerate((ti.BATCH1, {"web": [late_link]})):
        events = [pseudo.apply(dict(r, _role=kind)) for kind, rows in batch.items()
                  for r in rows]
        store.apply(stitch([l for e in events for l in event_links(e)], store, IdentityRules(),
                           set(), f"b{i}", ti.T0))
    assert {i: k for i, _, k, _ in streamed} == store.keys
    assert {i for i, _, _, s in streamed if s} == store.shared
    assert links == sorted({(a, b, t, e) for adj in store.adjacent.values()
                            for (a, b), (t, e) in adj.items()})

    # customer_360 works on the streaming warehouse: Anna's profile as in micro-batch mode.
    warehouse = open_warehouse(f"duckdb:{path}")
    try:
        warehouse.ensure_tables(TABLES.values())
        warehouse.ensure_views()
        profile = warehouse.query(
            "SELECT channels, identifier_count, web_events, social_events, survey_responses, "
            "orders, revenue, nps_latest FROM customer_360 WHERE customer_key = ?", [ti.ANNA])
        keys = {r[0] for r in warehouse.query("SELECT customer_key FROM customer_360")}
    finally:
        warehouse.close()
    assert profile == [("social=1, survey=1, web=6", 6, 6, 1, 1, 1, 59.9, 9)]
    assert keys == {ti.ANNA, ti.BOB, implicit_key("ck:ck-tablet")}


def test_streaming_drops_erased_customers_before_every_table(tmp_path):
    """Anna was erased (`cx360 forget`) before the job started: none of her events (w1-w4,
    w6 on the tablet with her account, p1, v1, the late w9) reaches any table; the tablet's
    anonymous w5 and Bob's w7, w8 do, as in micro-batch mode."""
    import test_identity as ti
    from cx360.transforms.identity import DEMO_KEY, Pseudonymiser
    from cx360.transforms.warehouse.spec import TABLES

    path = tmp_path / "erased.duckdb"
    pseudo = Pseudonymiser(DEMO_KEY)
    anna = ["acct:" + ti.ANNA, "ck:ck-anna-laptop", "ck:ck-anna-phone",
            "em:" + pseudo.email("anna.k@example.org"), "ph:" + pseudo.phone("0151 2345678"),
            "sh:instagram:@anna_k"]
    warehouse = open_warehouse(f"duckdb:{path}")
    try:
        warehouse.ensure_tables(TABLES.values())
        warehouse.execute_transaction([
            ("INSERT INTO erasures (identifier, customer_key, erased_at) VALUES (?, ?, ?)",
             [i, ti.ANNA, "2026-11-20 05:00:00"]) for i in anna])
    finally:
        warehouse.close()
    stream, _ = _identity_stream(Log())
    with streaming_pipeline() as p:
        build_streaming_pipeline(p, settings(warehouse_url=f"duckdb:{path}",
                                             fixed_now_ms=ti.at(24 * 60)), batches=p | stream)
    con = duckdb.connect(str(path))
    try:
        def q(sql):
            return sorted(con.execute(sql).fetchall())

        assert q("SELECT event_id FROM web_events") == [("w5",), ("w7",), ("w8",)]
        assert q("SELECT event_id, identifier FROM customer_touchpoints") == [
            ("w5", "ck:ck-tablet"), ("w7", "acct:" + ti.BOB), ("w8", "acct:" + ti.BOB)]
        assert q("SELECT count(*) FROM inbound_posts") == [(0,)]
        assert q("SELECT event_kind, sum(events) FROM event_counts GROUP BY 1") == [("web", 3)]
        assert q("SELECT count(*) FROM stream_web_sessions WHERE cookie_id LIKE 'ck-anna%'") \
            == [(0,)]
        assert not {i for (i,) in q("SELECT identifier FROM identity_map")} & set(anna)
    finally:
        con.close()


# -- pipeline health per interval and topic-partition --------------------------------------------
#
# The timeline of social_stream(bad=True) above, counted in 30-min intervals of Kafka record time
# (every record and dead letter in the interval of its record's Kafka timestamp):
#
# [10:00, 10:30) partition 0: p1 p2 @10:05 (offsets 0, 1)            -> 2 in, position 2
#                partition 2: p9 (future_timestamp), "hello" (undecodable) @10:06 -> 2 in, 2 dead
# [10:30, 11:00) partition 0: p3 @10:30 (offset 2)                    -> 1 in, position 3
# [11:00, 11:30) partition 0: p4 @11:10, p1 again @11:12, p6 @11:25 (too_late; it arrives after
#                the watermark reached 11:45: a LATE pane)            -> 3 in, 1 dead, position 6
# [11:30, 12:00) partition 1: p5 @11:35 (too_late)                    -> 1 in, 1 dead, position 1
# The clock of these tests is 23:59: freshness = 23:59 - newest record time of the interval.

def test_streaming_pipeline_health_per_interval_and_partition(kafka, topics, tmp_path):
    import json
    import subprocess
    import sys

    from kafka_helpers import produce

    path = tmp_path / "stream.duckdb"
    social = topics["social"]
    with streaming_pipeline() as p:
        build_streaming_pipeline(p, settings(
            warehouse_url=f"duckdb:{path}", health_interval_s=1800,
            topics={"social": social, "web": topics["web"], "survey": topics["survey"]}),
            batches=p | social_stream(Log(), bad=True, topic=social))
    con = duckdb.connect(str(path))
    try:
        rows = con.execute(
            'SELECT batch_id, "partition", records_in, accepted, dead_letters, '
            "dead_letters_by_reason, position, epoch_ms(max_event_time), freshness_s, "
            "epoch_ms(recorded_at), high_watermark, lag, batch_seconds, records_per_s, "
            "pane_timing FROM pipeline_health ORDER BY batch_id, \"partition\"").fetchall()
    finally:
        con.close()
    fresh = lambda ms: (T(23, 59) - ms) / 1000.0
    common = (T(23, 59), None, None, 1800.0)
    assert rows == [
        ("stream:2026-11-23T10:00:00Z/1800s", 0, 2, 2, 0, "{}", 2, T(10, 5), fresh(T(10, 5)),
         *common, round(2 / 1800, 3), "ON_TIME"),
        ("stream:2026-11-23T10:00:00Z/1800s", 2, 2, 0, 2,
         '{"future_timestamp": 1, "undecodable": 1}', 2, T(10, 6), fresh(T(10, 6)), *common,
         round(2 / 1800, 3), "ON_TIME"),
        ("stream:2026-11-23T10:30:00Z/1800s", 0, 1, 1, 0, "{}", 3, T(10, 30), fresh(T(10, 30)),
         *common, round(1 / 1800, 3), "ON_TIME"),
        ("stream:2026-11-23T11:00:00Z/1800s", 0, 3, 2, 1, '{"too_late": 1}', 6, T(11, 25),
         fresh(T(11, 25)), *common, round(3 / 1800, 3), "LATE"),
        ("stream:2026-11-23T11:30:00Z/1800s", 1, 1, 0, 1, '{"too_late": 1}', 1, T(11, 35),
         fresh(T(11, 35)), *common, round(1 / 1800, 3), "ON_TIME"),
    ]

    # The sink keeps one open warehouse per URL and process (panes.shared_warehouse); close it
    # as a finished worker would, so that another process can open the DuckDB file.
    from cx360.transforms.warehouse import panes
    panes._SHARED[f"duckdb:{path}"].close()

    # `cx360 health` on this streaming warehouse: positions and record times from these rows.
    # The topic holds the same offsets (6, 1 and 2 records) plus 3 new ones on partition 0.
    produce(kafka, social, [(b"k", post(f"x{i}", T(12))) for i in range(9)], partition=0)
    produce(kafka, social, [(b"k", post("y", T(12)))], partition=1)
    produce(kafka, social, [(b"k", post(f"z{i}", T(12))) for i in range(2)], partition=2)
    done = subprocess.run(
        [sys.executable, "-m", "cx360.pipelines.cli", "health", "--json", "--warehouse",
         f"duckdb:{path}", "--rate-window", "3650d", "--max-staleness", "3650d",
         "--warn-staleness", "3650d", "--social-topic", social, "--web-topic", topics["web"],
         "--survey-topic", topics["survey"], "--bootstrap-servers", kafka.bootstrap_servers],
        capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert "lag" in checks, (report, done.stderr[-2000:])
    assert checks["lag"]["value"] == 3                     # 9 - 6 on partition 0
    assert checks["dead_letter_rate"]["value"] == round(4 / 9, 6)   # 4 dead of 9 records
    age_s = time.time() - T(11, 35) / 1000                 # newest record time: 11:35
    assert abs(checks["freshness"]["value"] - max(0.0, age_s)) < 120
    assert checks["freshness"]["status"] == "OK" and checks["pending_batches"]["status"] == "OK"
    assert done.returncode == 2                            # 44 % dead letters: critical
