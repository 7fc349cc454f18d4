"""`cx360 run --once` on DuckDB, PostgreSQL and the BigQuery emulator over the same stream
writes the same tables and the KPI views give the same answers on all three; BigQuery's per-row
rejections become dead letters and the counts reconcile.

The same generated stream is read three times from a real broker with three consumer groups;
each run writes its own warehouse. DuckDB is the reference: every other backend must return
the same rows (timestamps compared as epoch ms, floats to 9 significant digits).
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import time

import pytest

from cx360.pipelines.generator import GeneratorConfig, generate
from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import SOCIAL, FileSchemaRegistry
from cx360.pipelines.job import TABLES_WRITTEN
from cx360.transforms.warehouse import open_warehouse
from conftest import REPO, cli
from kafka_helpers import produce

pytestmark = [pytest.mark.slow, pytest.mark.services]

HOUR = 3600
SQL = REPO / "transforms" / "warehouse" / "sql"
# Columns that say when or in which batch a row was written: they differ between two runs.
RUN_COLUMNS = {"batch_id", "failed_at", "updated_at", "recorded_at", "first_batch_id",
               "merged_at", "linked_at"}
TABLES_COMPARED = [t for t in TABLES_WRITTEN if t != "pipeline_health"]


def view_names(dialect: str) -> list[str]:
    text = (SQL / f"{dialect}_views.sql").read_text()
    return re.findall(r"CREATE (?:OR REPLACE )?VIEW `?(?:\$\{dataset\}\.)?(\w+)`? AS", text)


VIEWS = view_names("duckdb")


def norm(value):
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return ("ts", round(value.timestamp() * 1000))
    if isinstance(value, (list, tuple)):
        return tuple(norm(v) for v in value)
    if isinstance(value, (int, float, decimal.Decimal)):
        number = float(value)
        if number.is_integer() and abs(number) < 1e15:
            return int(number)
        return float(f"{number:.9g}")
    return value


def norm_cell(column, value):
    if column == "detail" and isinstance(value, str):  # relative to the processing clock
        value = re.sub(r"\d+ min in the future", "N min in the future", value)
    return norm(value)


def snapshot(warehouse, name: str) -> list[tuple]:
    rows = warehouse.query_records(f"SELECT * FROM {name}")
    out = [tuple(sorted((k, norm_cell(k, v)) for k, v in row.items() if k not in RUN_COLUMNS))
           for row in rows]
    return sorted(out, key=repr)


def run_once(broker, topics, url, group, *extra):
    args = ["run", "--once", "--json", "--warehouse", url, "--group-id", group,
            "--bootstrap-servers", broker.bootstrap, "--sliding", "1d/1h", *extra]
    for role, topic in topics.items():
        args += [f"--{role.replace('_', '-')}-topic", topic]
    done = cli(*args, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


#: Valid in Avro and JSON, but no warehouse can store U+0000 (PostgreSQL) or a lone surrogate
#: (none): these must be dead letters, not a batch that fails on every retry.
UNSTORABLE_EVENTS = 5


def unstorable_records(records):
    """A generated customer post re-sent as Avro with NULs in its author's handle, a survey
    re-sent as JSON with one in its touchpoint (both are stored in every backend), and one with
    a NUL in a score of the wrong type (the decoder's message quotes it); new event ids, so
    none is a duplicate; and the same two survey cases with a lone surrogate."""
    post = next(r.event for r in records if r.role == "social" and r.event
                and r.event["event_type"] == "post" and not r.event["author_is_brand"])
    survey = next(r.event for r in records if r.role == "survey" and r.event)
    codec = AvroCodec(FileSchemaRegistry())
    social = (b"nul-post", codec.encode(SOCIAL, dict(post, event_id="nul-post",
                                                     author_handle="@kaputt\x00\x00")))
    answer = (b"nul-survey", json.dumps(dict(survey, event_id="nul-survey",
                                             touchpoint="deliv\x00ery")).encode())
    wrong = (b"nul-score", json.dumps(dict(survey, event_id="nul-score",
                                           score="ze\x00ro")).encode())
    # JSON's escape "\ud83d" alone: half of an emoji's surrogate pair
    half = (b"half-emoji", json.dumps(dict(survey, event_id="half-emoji",
                                           comment="super \ud83d")).encode())
    half_wrong = (b"half-score", json.dumps(dict(survey, event_id="half-score",
                                                 score="\ud83d")).encode())
    return social, answer, wrong, half, half_wrong


@pytest.fixture(scope="module")
def stream(broker):
    """~400 generated events (with malformed, duplicate and late ones) and UNSTORABLE_EVENTS
    events with characters no warehouse stores, in fresh topics."""
    from cx360.pipelines.topics_cmd import create_topics
    from cx360.transforms.kafka_io import KafkaConfig

    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
    topics = {r: f"backends.{r}" for r in ("social", "web", "survey", "dead_letter")}
    create_topics(kafka, topics, partitions=3)
    now = int(time.time() * 1000)
    start = (now - 10 * 3_600_000) // 3_600_000 * 3_600_000
    records = list(generate(GeneratorConfig(seed=11, events=400, start_ms=start,
                                            duration_s=8 * HOUR, malformed=0.02,
                                            duplicates=0.02, late=0.05, now_ms=now)))
    social_nul, *survey_nul = unstorable_records(records)
    extra = {"social": [social_nul], "survey": survey_nul, "web": []}
    for role in ("social", "web", "survey"):
        produce(kafka, topics[role],
                [(r.key, r.value) for r in records if r.role == role] + extra[role])
    return topics


@pytest.fixture(scope="module")
def runs(broker, stream, tmp_path_factory, postgres_server, bigquery_emulator):
    """One `run --once` per backend over the same stream: {name: (url, summary)}."""
    urls = {
        "duckdb": f"duckdb:{tmp_path_factory.mktemp('e2e')}/w.duckdb",
        "postgres": postgres_server.url.replace("@", f":{postgres_server.password}@", 1)
        + "?schema=e2e",
        "bigquery": f"bigquery://{bigquery_emulator.project}/e2e"
                    f"?endpoint={bigquery_emulator.endpoint}",
    }
    return {name: (url, run_once(broker, stream, url, f"e2e-{name}"))
            for name, url in urls.items()}


def test_the_three_views_files_define_the_same_views_in_the_same_order():
    # A view added to duckdb_views.sql must be ported to the other two dialects.
    assert view_names("postgres") == VIEWS
    assert view_names("bigquery") == VIEWS
    assert "kpi_social" in VIEWS and "customer_360" in VIEWS


@pytest.mark.parametrize("other", ["postgres", "bigquery"])
def test_every_backend_reads_counts_and_writes_the_same_as_duckdb(runs, other):
    ref, got = runs["duckdb"][1], runs[other][1]
    assert got["reconciled"] and ref["reconciled"]
    assert got["topics"] == ref["topics"]
    assert got["rows_written"] == ref["rows_written"]
    assert got["rows_rejected"] == {}
    assert sum(v["read"] for v in ref["topics"].values()) == 400 + UNSTORABLE_EVENTS


@pytest.mark.parametrize("backend", ["duckdb", "postgres", "bigquery"])
def test_unstorable_characters_make_dead_letters_not_a_failed_batch(runs, backend):
    with open_warehouse(runs[backend][0], read_only=True) as wh:
        rows = wh.query("SELECT stage, reason, detail FROM dead_letters "
                        "WHERE detail LIKE '%NUL character%' OR detail LIKE '%<ze%ro>%' "
                        "OR detail LIKE '%surrogate%' OR detail LIKE '%ud83d>%' "
                        "ORDER BY detail")
        stored = wh.query("SELECT count(*) FROM customer_touchpoints WHERE event_id IN "
                          "('nul-post', 'nul-survey', 'half-emoji')")
    assert rows == [
        ("validate", "invalid_value", "author_handle contains a NUL character (U+0000)"),
        ("validate", "invalid_value",
         "comment contains a lone surrogate (U+D83D), not Unicode text"),
        # ... and as the six characters \ud83d
        ("decode", "schema_violation", "cx360.events.SurveyEvent.score is <\\ud83d> of type "
                                       "<class 'str'> expected int"),
        # the detail shows the NUL as the four characters \x00
        ("decode", "schema_violation", "cx360.events.SurveyEvent.score is <ze\\x00ro> of type "
                                       "<class 'str'> expected int"),
        ("validate", "invalid_value", "touchpoint contains a NUL character (U+0000)")]
    assert stored == [(0,)]


@pytest.mark.parametrize("other", ["postgres", "bigquery"])
def test_every_table_holds_the_same_rows_as_duckdb(runs, other):
    with open_warehouse(runs["duckdb"][0], read_only=True) as ref, \
            open_warehouse(runs[other][0]) as wh:
        for table in TABLES_COMPARED:
            expected = snapshot(ref, table)
            assert expected or table in ("identity_merges", "erasures"), table
            got = snapshot(wh, table)
            assert len(got) == len(expected), table
            assert [r for r in got if r not in expected] == [], table


@pytest.mark.parametrize("other,view", [
    (o, v) for o in ("postgres", "bigquery") for v in VIEWS])
def test_every_view_gives_the_same_answer_as_duckdb(runs, other, view):
    with open_warehouse(runs["duckdb"][0], read_only=True) as ref, \
            open_warehouse(runs[other][0]) as wh:
        expected = snapshot(ref, view)
        assert expected, view  # the stream exercises every view
        got = snapshot(wh, view)
        assert len(got) == len(expected), view
        missing = [r for r in got if r not in expected]
        nearest = [min(expected, key=lambda e: sum(a != b for a, b in zip(e, r)))
                   for r in missing[:1]]
        assert [[(a, b) for a, b in zip(r, e) if a != b] for r, e in zip(missing, nearest)
                ] == [], view


def test_bigquery_creates_its_views_once_and_again_when_one_is_missing(runs):
    """Each view is a query job of a second or more: a dataset whose views are current gets
    none re-created; a dropped view makes the next start re-create them."""
    from cx360.transforms.warehouse.bigquery_backend import (VIEWS_STAMP, view_name,
                                                             view_statements, views_stamp)

    with open_warehouse(runs["bigquery"][0]) as wh:
        jobs = []
        real_job = wh._job

        def recording_job(sql, *args, **kwargs):
            jobs.append(sql.split(" AS ")[0])
            return real_job(sql, *args, **kwargs)

        wh._job = recording_job
        wh.ensure_views()  # the run created them: one look at the stamp, nothing created
        assert jobs == [f"SELECT stamp FROM {wh._ref(VIEWS_STAMP)}"]
        statements = view_statements(wh.dataset)
        [statement] = [s for s in statements if view_name(s) == "kpi_churn_risk"]
        assert wh._views_current(statements, views_stamp(statements))
        real_job(f"DROP VIEW {wh._ref('kpi_churn_risk')}")
        assert not wh._views_current(statements, views_stamp(statements))
        real_job(statement)  # back as it was, without paying for all of them
        jobs.clear()
        wh.ensure_views()
        assert len(jobs) == 1
        assert wh.query("SELECT count(*) FROM kpi_churn_risk")[0][0] > 0


@pytest.mark.parametrize("other", ["postgres", "bigquery"])
def test_the_report_shows_the_same_numbers_from_every_backend(runs, other):
    from cx360.pipelines.report_cmd import load, render

    pages = {}
    for name in ("duckdb", other):
        with open_warehouse(runs[name][0], read_only=True) as wh:
            data = load(wh, [], None)
            assert data.sentiment and data.nps and data.funnel[0][1] > 0
            pages[name] = render(data, "same", 0)
    assert pages[other] == pages["duckdb"]


def test_the_sink_turns_rows_bigquery_rejects_into_dead_letters(bigquery_emulator):
    from cx360.transforms.decode import pack_events
    from cx360.transforms.kafka_io import PartitionRange
    from cx360.transforms.warehouse import Batch
    from cx360.transforms.warehouse.sink import WriteBatchFn

    url = f"bigquery://{bigquery_emulator.project}/sink?endpoint={bigquery_emulator.endpoint}"
    good = {"window_start": 0, "window_end": 3_600_000, "window_seconds": 3600,
            "event_kind": "social", "topic": "t", "event_type": "post", "brand": "b",
            "channel": "x", "events": 2}
    bad = dict(good, brand="c", events="many")  # BigQuery cannot store it in an INT64
    fn = WriteBatchFn(url, "b1", ["event_counts", "dead_letters"])
    fn.setup()
    try:
        fn._warehouse.record_batch(Batch("b1", 1, "pending", [PartitionRange("t", 0, 0, 2)]))
        [written] = list(fn.process(("batch", [("event_counts", pack_events([good, bad]))])))
        # 2 rows produced = 1 written + 1 rejected; the rejected one is 1 dead letter.
        assert written == {"event_counts": 1, "dead_letters": 1}
        wh = fn._warehouse
        assert wh.query("SELECT brand, events FROM event_counts") == [("b", 2)]
        [(stage, reason, detail, topic, value)] = wh.query(
            "SELECT stage, reason, detail, topic, value FROM dead_letters")
        assert (stage, reason, topic) == ("write", "warehouse_rejected", "warehouse:event_counts")
        assert detail == "BigQuery invalid: Cannot convert value to integer (bad value): many"
        assert json.loads(value)["brand"] == "c" and json.loads(value)["events"] == "many"
        assert [b.status for b in wh.batches()] == ["applied"]
    finally:
        fn.teardown()
