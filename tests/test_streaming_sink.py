"""The streaming sink (transforms/warehouse/panes.py) on DuckDB, PostgreSQL and BigQuery.

The same three replace modes on every backend, on real servers (PostgreSQL from apt and the
local-bigquery emulator, started by this session; see tests/conftest_services.py): panes
(replace iff ``(generation, pane_index)`` is at least the stored one), sessions (a session
replaces the stored sessions of its visitor that it overlaps unless one of them supersedes it)
and replace (plain upsert by key). Expected values are worked out by hand in the comments.
Times are minutes on 2026-11-23 (UTC): ``T(10, 5)`` is 10:05.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import itertools
import random

import pytest

from cx360.transforms.warehouse import open_warehouse
from cx360.transforms.warehouse.bigquery_backend import RetryPolicy
from cx360.transforms.warehouse.panes import (DEAD_LETTERS, EVENT_COUNT_PANES, WEB_SESSIONS,
                                              pane_spec, prepare, upsert)
from cx360.transforms.warehouse.spec import VOICE

DAY = 1_795_392_000_000  # 2026-11-23 00:00:00 UTC, epoch ms
# A table of another shape through the same sink (composite key of 4, no partition in the
# key order of EVENT_COUNTS): the CX KPI tables are added to the streaming job this way.
VOICE_PANES = pane_spec(VOICE, "the newest pane of each window.")
SINK_SPECS = [EVENT_COUNT_PANES, WEB_SESSIONS, DEAD_LETTERS, VOICE_PANES]
_schemas = itertools.count()


def T(hour: int, minute: int = 0) -> int:
    return DAY + (hour * 60 + minute) * 60_000


def ms(value):
    """A TIMESTAMP read back as epoch ms (DuckDB: naive UTC; the others: aware)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return round(value.timestamp() * 1000)
    return value


def count_row(events, pane_index, generation=1, brand="Nordwind", timing="LATE"):
    return {"window_seconds": 3600, "window_start": T(10), "window_end": T(11),
            "event_kind": "social", "topic": "cx.social", "event_type": "post",
            "brand": brand, "channel": "instagram", "events": events,
            "pane_index": pane_index, "pane_timing": timing, "generation": generation}


def session(start, end, events, cookie="c1", generation=1):
    return {"brand": "Kaffeeklatsch", "cookie_id": cookie, "session_start": start,
            "session_end": end, "last_event_at": end - 1_800_000, "events": events,
            "pane_index": 0, "pane_timing": "LATE", "generation": generation}


def dead_letter(dl_id, detail):
    return {"dead_letter_id": dl_id, "topic": "cx.social", "partition": 0, "offset": 1,
            "kafka_timestamp": T(10), "key": b"k", "value": b"\x00\xff", "stage": "decode",
            "reason": "undecodable", "detail": detail, "schema_id": None, "batch_id": None,
            "failed_at": T(10, 1)}


def rows(warehouse, sql):
    return sorted(tuple(ms(v) for v in row) for row in warehouse.query(sql))


@pytest.fixture(scope="session")
def bigquery_sink(bigquery_emulator):
    url = f"bigquery://{bigquery_emulator.project}/sink_contract?endpoint={bigquery_emulator.endpoint}"
    warehouse = open_warehouse(url)
    warehouse.retry = RetryPolicy(initial_s=0.05, max_s=0.5, attempts=20)
    prepare(warehouse, SINK_SPECS)
    yield url, warehouse
    warehouse.close()


@pytest.fixture(params=["duckdb",
                        pytest.param("postgres", marks=pytest.mark.services),
                        pytest.param("bigquery", marks=pytest.mark.services)])
def sink(request, tmp_path):
    """(backend name, url, open warehouse with the sink's tables, all empty)."""
    if request.param == "duckdb":
        url = f"duckdb:{tmp_path}/w.duckdb?snapshot=off"
        warehouse = open_warehouse(url)
        prepare(warehouse, SINK_SPECS)
    elif request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        url = server.url.replace("@", f":{server.password}@", 1) + f"?schema=s{next(_schemas)}"
        warehouse = open_warehouse(url)
        prepare(warehouse, SINK_SPECS)
    else:
        url, warehouse = request.getfixturevalue("bigquery_sink")
        warehouse.query(" ".join(f"DELETE FROM `{spec.name}` WHERE TRUE;"
                                 for spec in SINK_SPECS))
    yield request.param, url, warehouse
    if request.param != "bigquery":
        warehouse.close()


def test_panes_an_older_pane_never_overwrites_a_newer_one(sink):
    _, _, wh = sink
    counts = "SELECT brand, events, pane_index, pane_timing, generation FROM event_counts"
    # Pane 2 (4 events) lands before pane 1 (3 events): pane 1 is ignored.
    assert upsert(wh, EVENT_COUNT_PANES, [count_row(4, 2)], "panes") == 1
    upsert(wh, EVENT_COUNT_PANES, [count_row(3, 1, timing="ON_TIME")], "panes")
    assert rows(wh, counts) == [("Nordwind", 4, 2, "LATE", 1)]
    # The same pane again (a retried bundle): idempotent, still one row.
    upsert(wh, EVENT_COUNT_PANES, [count_row(4, 2)], "panes")
    assert rows(wh, counts) == [("Nordwind", 4, 2, "LATE", 1)]
    # Equal (generation, pane_index) replaces: a re-fired pane carries the same values, and
    # the sink must not prefer either copy. One call with a newer pane of Nordwind (pane 3,
    # 6 events), an older one (pane 0) and a new key (Kaffeeklatsch): per key the newest wins.
    upsert(wh, EVENT_COUNT_PANES, [count_row(6, 3), count_row(1, 0),
                                   count_row(2, 0, brand="Kaffeeklatsch", timing="EARLY")],
           "panes")
    assert rows(wh, counts) == [("Kaffeeklatsch", 2, 0, "EARLY", 1),
                                ("Nordwind", 6, 3, "LATE", 1)]
    # A new job (generation 2) starts its pane indexes at 0 again and replaces generation 1;
    # a late write of the old job (generation 1, pane 9) afterwards changes nothing.
    upsert(wh, EVENT_COUNT_PANES, [count_row(5, 0, generation=2)], "panes")
    upsert(wh, EVENT_COUNT_PANES, [count_row(9, 9, generation=1)], "panes")
    assert rows(wh, counts) == [("Kaffeeklatsch", 2, 0, "EARLY", 1),
                                ("Nordwind", 5, 0, "LATE", 2)]


def test_panes_replace_a_row_without_pane_columns(sink):
    # A micro-batch row (pane columns NULL, e.g. pipeline_health) counts as (-1, -1).
    _, _, wh = sink
    row = dict(count_row(7, None), generation=None, pane_timing=None)
    upsert(wh, EVENT_COUNT_PANES, [row], "panes")
    upsert(wh, EVENT_COUNT_PANES, [count_row(1, 0)], "panes")
    assert rows(wh, "SELECT events, pane_index, generation FROM event_counts") == [(1, 0, 1)]


def test_panes_are_generic_over_the_table_spec(sink):
    _, _, wh = sink

    def voice(brand, platform, mentions, reach, pane):
        return {"window_start": T(10), "window_end": T(11), "window_seconds": 3600,
                "brand": brand, "platform": platform, "mentions": mentions, "reach": reach,
                "pane_index": pane, "pane_timing": "EARLY", "generation": 1}

    upsert(wh, VOICE_PANES, [voice("A", "x", 3, 300, 1), voice("A", "y", 1, 10, 0)], "panes")
    upsert(wh, VOICE_PANES, [voice("A", "x", 2, 200, 0), voice("A", "y", 2, 20, 1)], "panes")
    # (A, x): pane 0 arrived after pane 1 -> stays 3/300; (A, y): pane 1 replaces pane 0.
    assert rows(wh, "SELECT brand, platform, mentions, reach, pane_index "
                    "FROM share_of_voice_counts") == [("A", "x", 3, 300, 1), ("A", "y", 2, 20, 1)]


def test_sessions_a_merged_session_replaces_what_it_overlaps_a_stale_one_does_not(sink):
    _, _, wh = sink
    stored = ("SELECT cookie_id, session_start, session_end, events, generation "
              "FROM stream_web_sessions")
    # c1 has two sessions [10:00, 10:40) and [10:50, 11:20); c2 one, [10:05, 10:35).
    assert upsert(wh, WEB_SESSIONS, [session(T(10), T(10, 40), 2),
                                     session(T(10, 50), T(11, 20), 1),
                                     session(T(10, 5), T(10, 35), 1, cookie="c2")],
                  "sessions") == 3
    # A late event merges c1's two: [10:00, 11:20) with 4 events replaces both; c2 untouched.
    assert upsert(wh, WEB_SESSIONS, [session(T(10), T(11, 20), 4)], "sessions") == 1
    assert rows(wh, stored) == [("c1", T(10), T(11, 20), 4, 1), ("c2", T(10, 5), T(10, 35), 1, 1)]
    # The old pane of the second session, written late: the merged row supersedes it.
    assert upsert(wh, WEB_SESSIONS, [session(T(10, 50), T(11, 20), 1)], "sessions") == 0
    # The merged row written again (a retry): replaces itself, same state.
    upsert(wh, WEB_SESSIONS, [session(T(10), T(11, 20), 4)], "sessions")
    assert rows(wh, stored) == [("c1", T(10), T(11, 20), 4, 1), ("c2", T(10, 5), T(10, 35), 1, 1)]
    # An extended session (c2 now runs to 11:00 with 2 events) replaces its shorter self.
    upsert(wh, WEB_SESSIONS, [session(T(10, 5), T(11), 2, cookie="c2")], "sessions")
    # A newer generation replaces what it overlaps even when it is smaller.
    upsert(wh, WEB_SESSIONS, [session(T(10, 30), T(11), 1, generation=2)], "sessions")
    assert rows(wh, stored) == [("c1", T(10, 30), T(11), 1, 2), ("c2", T(10, 5), T(11), 2, 1)]
    assert rows(wh, "SELECT brand, sessions, events FROM stream_web_session_counts") == [
        ("Kaffeeklatsch", 2, 3)]


def test_replace_upserts_by_key(sink):
    _, _, wh = sink
    upsert(wh, DEAD_LETTERS, [dead_letter("t/0/1", "first"), dead_letter("t/0/2", "other")],
           "replace")
    # Same key again, twice in one call: the last row of the call wins.
    assert upsert(wh, DEAD_LETTERS, [dead_letter("t/0/1", "second"),
                                     dead_letter("t/0/1", "third")], "replace") == 1
    assert rows(wh, "SELECT dead_letter_id, detail, value FROM dead_letters") == [
        ("t/0/1", "third", b"\x00\xff"), ("t/0/2", "other", b"\x00\xff")]


@pytest.mark.services
def test_rows_bigquery_refuses_become_dead_letters_not_a_failing_bundle(bigquery_sink):
    """A batch that raised would be retried for ever by a streaming runner."""
    import json

    from cx360.transforms.warehouse.panes import UpsertPanesFn

    url, wh = bigquery_sink
    wh.query(" ".join(f"DELETE FROM `{spec.name}` WHERE TRUE;" for spec in SINK_SPECS))
    fn = UpsertPanesFn(url, EVENT_COUNT_PANES.name, "panes")
    fn.setup()
    good, older = count_row(5, 1), count_row(2, 0, brand="Sturmflut")
    bad = dict(count_row(7, 1, brand="Sturmflut"), events="many")  # no INT64
    for attempt in range(2):  # the second batch is a retry of the first
        list(fn.process((EVENT_COUNT_PANES.name, [good, older, bad])))
        # Sturmflut's newest pane was refused; its older pane is stale, so not written either.
        assert rows(wh, "SELECT brand, events, pane_index FROM event_counts") == [
            ("Nordwind", 5, 1)]
        [(dl_id, stage, reason, detail, topic, value)] = wh.query(
            "SELECT dead_letter_id, stage, reason, detail, topic, value FROM dead_letters")
        assert (stage, reason, topic) == ("write", "warehouse_rejected", "warehouse:event_counts")
        assert dl_id.startswith("write/event_counts/")
        assert detail == "BigQuery invalid: Cannot convert value to integer (bad value): many"
        assert (json.loads(value)["brand"], json.loads(value)["events"]) == ("Sturmflut", "many")
    fn.teardown()


def test_concurrent_writers_keep_the_newest_pane(sink):
    """Writers on their own connections, each writing panes of the same keys in a random
    order at the same time: the newest pane of every key wins (PostgreSQL: the ON CONFLICT
    guard on the locked row; BigQuery: the sink lock row makes concurrent transactions
    conflict, the loser is retried; DuckDB: one writer per file, here one shared object)."""
    name, url, wh = sink
    writers, panes = (2, 2) if name == "bigquery" else (4, 12)
    brands = ["A", "B"]

    def write(seed):
        own = wh if name == "duckdb" else open_warehouse(url)
        if name == "bigquery":
            own.retry = RetryPolicy(initial_s=0.05, max_s=0.5, attempts=30)
        try:
            order = [(b, p) for b in brands for p in range(panes)]
            random.Random(seed).shuffle(order)
            for brand, pane in order:
                upsert(own, EVENT_COUNT_PANES, [count_row(pane * 10, pane, brand=brand)], "panes")
        finally:
            if own is not wh:
                own.close()

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    top = panes - 1
    assert rows(wh, "SELECT brand, events, pane_index FROM event_counts") == [
        ("A", top * 10, top), ("B", top * 10, top)]


# -- the streaming job end to end on every backend ----------------------------------------------

def _normalise(value):
    if isinstance(value, dt.datetime):
        return ("ts", ms(value))
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, memoryview):
        return bytes(value)
    if hasattr(value, "is_integer") and not isinstance(value, (int, bool)):  # Decimal
        return int(value) if value == int(value) else float(value)
    return value


def _table(warehouse, name):
    return sorted((tuple(sorted((k, _normalise(v)) for k, v in row.items()))
                   for row in warehouse.query_records(f"SELECT * FROM {name}")), key=repr)


def _stream_into(url: str) -> str:
    """Run the timeline of test_streaming.test_replace_upsert_sink_keeps_exactly_the_last_pane
    (TestStream, BundleBasedDirectRunner, identity stitching on) into ``url``."""
    import test_streaming as ts
    from cx360.pipelines.streaming import build_streaming_pipeline, prepare_warehouse
    from cx360.transforms.warehouse import panes

    prepare_warehouse(url)  # as `cx360 stream` does before submitting: tables and views
    with ts.streaming_pipeline() as p:
        build_streaming_pipeline(p, ts.settings(warehouse_url=url),
                                 batches=p | ts.sink_stream(ts.Log()))
    panes._SHARED.pop(url).close()  # the sink's shared warehouse (one per URL and process)
    return url


@pytest.fixture(scope="module")
def duckdb_streamed(tmp_path_factory):
    return _stream_into(f"duckdb:{tmp_path_factory.mktemp('stream')}/s.duckdb?snapshot=off")


@pytest.fixture(scope="module")
def postgres_streamed(postgres_server):
    return _stream_into(postgres_server.url.replace("@", f":{postgres_server.password}@", 1)
                        + f"?schema=stream{next(_schemas)}")


@pytest.fixture(scope="module")
def bigquery_streamed(bigquery_emulator):
    return _stream_into(f"bigquery://{bigquery_emulator.project}/stream_e2e"
                        f"?endpoint={bigquery_emulator.endpoint}")


# What the job writes: the newest pane of each window and session, the two too-late dead
# letters, health per interval and partition, the identity tables and touchpoints.
JOB_TABLES = ("event_counts", "stream_web_sessions", "stream_web_session_counts", "dead_letters",
              "pipeline_health", "customer_touchpoints", "identity_links", "identity_map",
              "identity_merges", "social_kpis", "share_of_voice_counts",
              "web_events", "kpi_social", "kpi_web")


def test_the_streaming_job_writes_the_hand_worked_rows_into_duckdb(duckdb_streamed):
    # The values of test_streaming.test_replace_upsert_sink_keeps_exactly_the_last_pane.
    with open_warehouse(duckdb_streamed) as wh:
        assert rows(wh, "SELECT topic, brand, events, pane_timing, pane_index FROM event_counts"
                    ) == [("cx.social", "Nordwind", 4, "LATE", 2),
                          ("cx.web", "Kaffeeklatsch", 5, "LATE", 2)]


@pytest.mark.services
@pytest.mark.parametrize("other", [
    "postgres",
    # ~150 s on a busy 2-core machine: each of the job's bundles is a streaming insert plus a
    # query job, 1-3 s each on the emulator. Deselected by -m 'not slow'.
    pytest.param("bigquery", marks=pytest.mark.slow)])
def test_the_streaming_job_writes_the_same_tables_on_every_backend(request, duckdb_streamed,
                                                                  other):
    from test_streaming import T as t

    url = request.getfixturevalue(f"{other}_streamed")
    with open_warehouse(duckdb_streamed) as ref, open_warehouse(url) as wh:
        # Hand-worked (test_streaming.py's timeline): c1's two sessions merged by w5.
        assert rows(wh, "SELECT cookie_id, session_start, session_end, last_event_at, events "
                        "FROM stream_web_sessions") == [
            ("c1", t(10, 0), t(11, 20), t(10, 50), 4), ("c2", t(10, 5), t(10, 35), t(10, 5), 1)]
        assert rows(wh, "SELECT dead_letter_id, stage, reason FROM dead_letters") == [
            ("cx.social/0/5", "window", "too_late"), ("cx.social/1/0", "window", "too_late")]
        for table in JOB_TABLES:
            expected = _table(ref, table)
            assert expected or table.startswith("identity_"), table  # no identity links here
            assert _table(wh, table) == expected, table


# -- `cx360 stream` with a shared warehouse ------------------------------------------------------

@pytest.mark.parametrize("warehouse", [
    "postgresql://cx360:s3cret-pw@db.example.internal:5432/cx?schema=cx360",
    "bigquery://cx360-demo/cx360?location=EU"])
def test_stream_command_passes_shared_warehouses_through_without_printing_a_password(
        kafka, topics, capsys, warehouse):
    import test_streaming as ts
    from cx360.pipelines.stream_cmd import build_settings, run

    argv = ["--bootstrap-servers", kafka.bootstrap_servers, "--social-topic", topics["social"],
            "--web-topic", topics["web"], "--survey-topic", topics["survey"],
            "--runner", "DataflowRunner", "--warehouse", warehouse]
    # The URL reaches the sink unchanged (the writers connect in DoFn.setup, on the workers).
    assert build_settings(ts._stream_args(*argv)).warehouse_url == warehouse
    ts._require_gcp_extra()
    assert run(ts._stream_args(*argv, "--", *ts.DRY_RUN_FLAGS[:-1])) == 0
    out = capsys.readouterr()
    assert "dry run: DataflowRunner job built" in out.out
    assert "s3cret" not in out.out + out.err
    assert "is a file on one machine" not in out.err  # the DuckDB warning only for DuckDB


def test_the_sink_writes_a_table_in_batches_of_at_most_batch_rows(tmp_path):
    """7 rows of one table with batch_rows=3: batches of 3, 3 and 1 (three transactions),
    every row written once."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    from cx360.pipelines.job import local_options
    from cx360.transforms.warehouse.panes import UpsertPanes

    url = f"duckdb:{tmp_path}/w.duckdb?snapshot=off"
    warehouse = open_warehouse(url)
    prepare(warehouse, [DEAD_LETTERS])
    warehouse.close()
    pipeline = beam.Pipeline(options=local_options())
    _ = (pipeline
         | beam.Create([dead_letter(f"t/0/{i}", f"row {i}") for i in range(7)])
         | UpsertPanes(url, DEAD_LETTERS.name, "replace", batch_rows=3))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace("cx360.write"))["counters"]}
    assert counters == {"rows_written:dead_letters": 7, "batches:dead_letters": 3}
    with open_warehouse(url) as warehouse:
        assert rows(warehouse, "SELECT dead_letter_id FROM dead_letters") == [
            (f"t/0/{i}",) for i in range(7)]
