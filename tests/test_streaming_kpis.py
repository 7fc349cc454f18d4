"""The CX KPIs of the production streaming job equal those of the local micro-batch mode.

The same generated events (three days, with duplicates, malformed records and late arrivals)
go through the streaming job (TestStream on the BundleBasedDirectRunner, early, on-time and
late panes, the replace-upsert sink into DuckDB) and through `cx360 run --once` (a real
broker, several micro-batches whose components are added up) into a second DuckDB. Every
kpi_* view (identity stitching runs in both, so the journey views and customer_360 too) and
every component and fact table must hold the same rows in both (pane columns aside). Then one hand-worked case: an early pane, then a late event whose pane replaces it.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import apache_beam as beam
import duckdb
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from cx360.pipelines.generator import GeneratorConfig, generate
from cx360.pipelines.streaming import (StreamingSettings, build_streaming_pipeline,
                                       prepare_warehouse)
from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import SURVEY, FileSchemaRegistry
from cx360.transforms.kafka_io import KafkaConfig, KafkaRecord
from cx360.transforms.kpis import load_brands
from cx360.transforms.warehouse.panes import PANE_COLUMNS
from kafka_helpers import produce

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SLIDING = "2h/1h"
COMPONENT_TABLES = ("social_kpis", "social_kpis_sliding", "share_of_voice_counts",
                    "aspect_mentions", "survey_kpis", "survey_kpis_sliding")
FACT_TABLES = ("inbound_posts", "brand_replies", "web_events")
PANE_NAMES = {c.name for c in PANE_COLUMNS}


def streaming_pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner="BundleBasedDirectRunner",
                            options=StandardOptions(streaming=True))


def settings(topics: dict, url: str, now_ms: int, **overrides) -> StreamingSettings:
    values = dict(kafka=KafkaConfig(), registry=FileSchemaRegistry(), topics=topics,
                  warehouse_url=url, window_sizes=(3600, 86400), sliding=((7200, 3600),),
                  allowed_lateness_s=DAY_MS // 1000, lateness_slack_s=600,
                  early_firing_s=60, gate_step_s=1800, gate_idle_steps=4, generation=1,
                  fixed_now_ms=now_ms, identity_interval_s=3600, health_interval_s=3600,
                  session_gap_s=None,
                  brands=tuple(load_brands()))
    values.update(overrides)
    return StreamingSettings(**values)


def event_stream(records, topics: dict, chunk: int = 100) -> EventStream:
    """The records in arrival order, ``chunk`` at a time: one batch per topic (partition 0),
    stamped with its first record's arrival time as its Kafka timestamp; after each chunk
    the watermark moves to the chunk's last arrival (so hourly windows close on time and
    late arrivals make late panes), and every other chunk 61 s of processing time pass
    (early panes)."""
    offsets = {}
    stream = EventStream()
    for n, begin in enumerate(range(0, len(records), chunk)):
        part = records[begin:begin + chunk]
        batches = {}
        for record in part:
            topic = topics[record.role]
            offset = offsets.get(topic, 0)
            offsets[topic] = offset + 1
            batches.setdefault(topic, []).append(KafkaRecord(
                topic, 0, offset, record.truth["arrival_ms"], record.key, record.value))
        stream = stream.add_elements([
            TimestampedValue(batch, Timestamp(micros=batch[0].timestamp_ms * 1000))
            for batch in batches.values()])
        if n % 2:
            stream = stream.advance_processing_time(61)
        stream = stream.advance_watermark_to(
            Timestamp(micros=part[-1].truth["arrival_ms"] * 1000))
    return stream.advance_watermark_to_infinity()


def normalized(con, sql: str) -> tuple[tuple, list[tuple]]:
    """(column names, rows): the columns sorted by name without the pane columns, floats
    rounded to 9 places (the modes sum polarities in a different order), rows sorted."""
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    keep = sorted((name, i) for i, name in enumerate(names) if name not in PANE_NAMES)
    out = []
    for row in cursor.fetchall():
        values = []
        for _, i in keep:
            value = row[i]
            if isinstance(value, float):
                value = None if math.isnan(value) else round(value, 9) + 0.0
            values.append(value)
        out.append(tuple(values))
    return tuple(name for name, _ in keep), sorted(out, key=repr)


@pytest.fixture(scope="module")
def both_modes(broker, tmp_path_factory):
    """(micro-batch warehouse, streaming warehouse) over the same generated records."""
    from cx360.pipelines.topics_cmd import create_topics

    now = int(time.time() * 1000)
    start = (now // DAY_MS - 4) * DAY_MS
    config = GeneratorConfig(seed=17, events=600, start_ms=start, duration_s=3 * 86400,
                             malformed=0.02, duplicates=0.02, late=0.05, now_ms=now)
    records = list(generate(config))
    work = tmp_path_factory.mktemp("modes")

    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
    topics = {r: f"modes.{r}" for r in ("social", "web", "survey", "dead_letter")}
    create_topics(kafka, topics, partitions=3)
    for role in ("social", "web", "survey"):
        produce(kafka, topics[role], [(r.key, r.value) for r in records if r.role == role])
    started = time.monotonic()
    micro = work / "micro.duckdb"
    args = ["run", "--once", "--json", "--max-batch-records", "60", "--sliding", SLIDING,
            "--warehouse", f"duckdb:{micro}", "--bootstrap-servers", broker.bootstrap]
    for role, topic in topics.items():
        args += [f"--{role.replace('_', '-')}-topic", topic]
    # `cx360 run --once` (batches until caught up) in a subprocess while this process runs
    # the streaming job: the modes share nothing but the records, and the test takes the
    # time of the slower one on two cores.
    micro_run = subprocess.Popen([sys.executable, "-m", "cx360.pipelines.cli", *args],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        streamed = work / "stream.duckdb"
        url = f"duckdb:{streamed}"
        event_topics = {r: t for r, t in topics.items() if r != "dead_letter"}
        with streaming_pipeline() as p:
            build_streaming_pipeline(p, settings(event_topics, url, now),
                                     batches=p | event_stream(records, topics))
        prepare_warehouse(url)
        print(f"streaming mode: {time.monotonic() - started:.1f} s")
        stdout, stderr = micro_run.communicate(timeout=300)
    finally:
        if micro_run.poll() is None:
            micro_run.kill()
            micro_run.communicate()
    assert micro_run.returncode == 0, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["reconciled"] and summary["records_read"] == len(records)
    batches = len(summary["batches"])
    assert batches >= 2  # windows span micro-batches: their components are added up
    print(f"micro-batch mode ({batches} batches) done too after "
          f"{time.monotonic() - started:.1f} s")
    return micro, streamed


@pytest.fixture(scope="module")
def cons(both_modes):
    micro = duckdb.connect(str(both_modes[0]), read_only=True)
    # not read-only: this process still holds the sink's connection (one configuration per file)
    streamed = duckdb.connect(str(both_modes[1]))
    yield micro, streamed
    micro.close()
    streamed.close()


def test_component_and_fact_tables_are_identical(cons):
    micro, streamed = cons
    for table in COMPONENT_TABLES + FACT_TABLES + ("event_counts", "brands",
                                                   "customer_touchpoints"):
        expected = normalized(micro, f"SELECT * FROM {table}")
        assert expected[1], table  # the generated data fills every table
        assert normalized(streamed, f"SELECT * FROM {table}") == expected, table
    # Not vacuous: the stream produced early and late panes, and the sink kept the newest.
    timings = dict(streamed.execute(
        "SELECT pane_timing, count(*) FROM social_kpis GROUP BY ALL").fetchall())
    assert timings.get("LATE", 0) > 0 and timings.get("ON_TIME", 0) > 0, timings


def test_every_kpi_view_is_identical(cons):
    micro, streamed = cons
    views = [name for (name,) in micro.execute(
        "SELECT view_name FROM duckdb_views() WHERE view_name LIKE 'kpi_%' "
        "AND NOT internal ORDER BY view_name").fetchall()]
    assert {"kpi_social", "kpi_share_of_voice", "kpi_response", "kpi_web", "kpi_funnel",
            "kpi_survey", "kpi_social_sliding", "kpi_survey_sliding", "kpi_aspects",
            "kpi_journey", "kpi_journey_transitions", "kpi_churn_risk"} <= set(views)
    for view in views:
        expected = normalized(micro, f"SELECT * FROM {view}")
        assert expected[1], view
        assert normalized(streamed, f"SELECT * FROM {view}") == expected, view
    # customer_360 too: identity stitching runs in both (the journey views depend on it).
    expected = normalized(micro, "SELECT * FROM customer_360")
    assert expected[1]
    assert normalized(streamed, "SELECT * FROM customer_360") == expected


# -- hand-worked: an early pane, then a late event -----------------------------------------------
#
# Times on 2026-11-23 (UTC). Hourly windows only, allowed lateness 30 min.
# watermark 10:00
# batch @10:05  s1 NPS 10 (10:01), s2 NPS 3 (10:02)   -> +61 s: EARLY pane, 2 responses,
#                                                         1 promoter, 1 detractor: NPS 0
# watermark 11:00                                     -> ON_TIME pane, the same
# batch @11:10  s3 NPS 9 (10:50)                      -> late (before 11:30): LATE pane,
#                                                         3 responses, 2 promoters, 1 detractor
# The sink replaces the row each time: the warehouse ends with the LATE pane, and kpi_survey
# shows NPS 100 * (2 - 1) / 3 = 33.33.

DAY = 1_795_392_000_000  # 2026-11-23 00:00:00 UTC


def T(hour: int, minute: int = 0) -> int:
    return DAY + (hour * 60 + minute) * 60_000


def nps(event_id: str, at_ms: int, score: int) -> bytes:
    return AvroCodec(FileSchemaRegistry()).encode(SURVEY, {
        "event_id": event_id, "event_time": at_ms, "brand": "Kaffino", "survey_id": "q1",
        "survey_type": "NPS", "score": score, "touchpoint": "order", "channel": "email",
        "lang": "de"})


def test_a_late_pane_replaces_the_early_one_and_the_view_shows_the_corrected_nps(tmp_path):
    url = f"duckdb:{tmp_path / 'late.duckdb'}"

    def batch(kafka_ms, offset, *values):
        return TimestampedValue(
            [KafkaRecord("cx.survey", 0, offset + i, kafka_ms, b"k", v)
             for i, v in enumerate(values)], Timestamp(micros=kafka_ms * 1000))

    stream = (EventStream()
              .advance_watermark_to(Timestamp(micros=T(10) * 1000))
              .add_elements([batch(T(10, 5), 0, nps("s1", T(10, 1), 10), nps("s2", T(10, 2), 3))])
              .advance_processing_time(61)
              .advance_watermark_to(Timestamp(micros=T(11) * 1000))
              .add_elements([batch(T(11, 10), 2, nps("s3", T(10, 50), 9))])
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        out = build_streaming_pipeline(p, settings(
            {"survey": "cx.survey"}, url, T(23, 59), window_sizes=(3600,), sliding=(),
            session_gap_s=None, allowed_lateness_s=1800, brands=()), batches=p | stream)
        panes = out["kpi_tables"]["survey_kpis"] | beam.Map(
            lambda r: (r["window_start"], r["brand"], r["responses"], r["promoters"],
                       r["detractors"], r["score_sum"], r["pane_timing"], r["pane_index"]))
        assert_that(panes, equal_to([
            (T(10), "Kaffino", 2, 1, 1, 13, "EARLY", 0),
            (T(10), "Kaffino", 2, 1, 1, 13, "ON_TIME", 1),
            (T(10), "Kaffino", 3, 2, 1, 22, "LATE", 2),
        ]))
    prepare_warehouse(url)
    con = duckdb.connect(url.removeprefix("duckdb:"))
    try:
        stored = con.execute(
            "SELECT epoch_ms(window_start), responses, promoters, detractors, pane_timing "
            "FROM survey_kpis").fetchall()
        view = con.execute("SELECT epoch_ms(window_start), window_seconds, responses, "
                           "round(nps, 2) FROM kpi_survey").fetchall()
    finally:
        con.close()
    assert stored == [(T(10), 3, 2, 1, "LATE")]
    assert view == [(T(10), 3600, 3, 33.33)]
