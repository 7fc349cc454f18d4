"""The warehouse contract: DuckDB, PostgreSQL and BigQuery behave the same, on real servers.

DuckDB is a file; PostgreSQL is a private server from Debian's package and BigQuery is the
local-bigquery emulator reached with the real google-cloud-bigquery client, both started by this
test session (tests/services.py) and stopped at its end. PostgreSQL and BigQuery tests carry the
``services`` mark: ``-m 'not services'`` deselects them. Expected values are worked out by hand
in the comments.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json

import duckdb
import psycopg
import pytest
from google.api_core import exceptions as gexc

from cx360.transforms.kafka_io import PartitionRange
from cx360.transforms.warehouse import Batch, WarehouseError, open_warehouse
from cx360.transforms.warehouse.bigquery_backend import (
    STAGE_PREFIX, RejectedRowsError, RetryPolicy, is_transient, rejected_to_dead_letters)
from cx360.transforms.warehouse.spec import DEAD_LETTERS, EVENT_COUNTS, EVENT_IDS, C, TableSpec


ALL_TYPES = TableSpec(
    name="contract_all_types",
    columns=(C("id", "STRING", nullable=False), C("n", "INT64"), C("x", "FLOAT64"),
             C("flag", "BOOL"), C("at", "TIMESTAMP", nullable=False), C("blob", "BYTES")),
    key=("id",), merge="replace", partition_by="at", cluster_by=("id",))
SPECS = {s.name: s for s in (EVENT_COUNTS, DEAD_LETTERS, EVENT_IDS, ALL_TYPES)}
FAILURES = {"duckdb": duckdb.Error, "postgres": psycopg.Error, "bigquery": RejectedRowsError}
_schemas = itertools.count()


def count_row(events, brand="b", start=0):
    return {"window_start": start, "window_end": start + 3_600_000, "window_seconds": 3600,
            "event_kind": "social", "topic": "t", "event_type": "post", "brand": brand,
            "channel": "x", "events": events}


def dead_letter(detail="first", **changes):
    row = {"dead_letter_id": "t/0/1", "topic": "t", "partition": 0, "offset": 1,
           "kafka_timestamp": 5, "key": b"k", "value": b"\x00\xff", "stage": "decode",
           "reason": "undecodable", "detail": detail, "schema_id": None, "batch_id": "b1",
           "failed_at": 10}
    row.update(changes)
    return row


def ms(value):
    """A TIMESTAMP read back as epoch milliseconds (DuckDB returns naive UTC datetimes)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(
        milliseconds=1)


@dataclasses.dataclass
class Backend:
    name: str
    url: str
    wh: object

    def q(self, identifier: str) -> str:
        return f"`{identifier}`" if self.name == "bigquery" else f'"{identifier}"'

    def reopen(self):
        """A second warehouse object on the same URL (DuckDB: the first is closed, one writer)."""
        if self.name == "duckdb":
            self.wh.close()
        self.wh = open_warehouse(self.url)
        return self.wh

    def record(self, batch_id, created_ms=1):
        self.wh.record_batch(Batch(batch_id, created_ms, "pending",
                                   [PartitionRange("t", 0, 0, 10)]))


@pytest.fixture(scope="session")
def bigquery_contract(bigquery_emulator):
    """One dataset for the session, tables made once; each test starts from empty tables."""
    url = f"bigquery://{bigquery_emulator.project}/contract?endpoint={bigquery_emulator.endpoint}"
    warehouse = open_warehouse(url)
    warehouse.ensure_tables(SPECS.values())
    warehouse.retry = RetryPolicy(initial_s=0.01, max_s=0.05, attempts=5)
    yield url, warehouse
    warehouse.close()


def _empty_bigquery(warehouse):
    # Staging tables are left alone: they are only ever appended to (and expire) in production.
    warehouse.query(" ".join(f"DELETE FROM `{name}` WHERE TRUE;"
                             for name in [*SPECS, "_cx360_batches"]))


@pytest.fixture(params=["duckdb",
                        pytest.param("postgres", marks=pytest.mark.services),
                        pytest.param("bigquery", marks=pytest.mark.services)])
def backend(request, tmp_path):
    if request.param == "duckdb":
        url = f"duckdb:{tmp_path}/w.duckdb"
        warehouse = open_warehouse(url)
        warehouse.ensure_tables(SPECS.values())
    elif request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        url = server.url.replace("@", f":{server.password}@", 1) + f"?schema=c{next(_schemas)}"
        warehouse = open_warehouse(url)
        warehouse.ensure_tables(SPECS.values())
    else:
        url, warehouse = request.getfixturevalue("bigquery_contract")
        _empty_bigquery(warehouse)
    b = Backend(request.param, url, warehouse)
    yield b
    if request.param != "bigquery":
        b.wh.close()
    elif b.wh is not warehouse:
        b.wh.close()


@pytest.fixture()
def bq(bigquery_contract):
    url, warehouse = bigquery_contract
    _empty_bigquery(warehouse)
    return warehouse


# -- the contract, on every backend ----------------------------------------------------------
def test_additive_merge_within_and_across_batches_and_a_rerun_changes_nothing(backend):
    wh = backend.wh
    backend.record("b1", 1)
    # Within b1, brand b appears twice (2 + 3 = 5), brand c once: two rows written.
    assert wh.write_batch("b1", {"event_counts": [count_row(2), count_row(3), count_row(1, "c")]},
                          SPECS) == {"event_counts": 2}
    backend.record("b2", 2)
    assert wh.write_batch("b2", {"event_counts": [count_row(4)]}, SPECS) == {"event_counts": 1}
    # Across batches: b = 5 + 4 = 9, c = 1.
    assert wh.query("SELECT brand, events FROM event_counts ORDER BY brand") == [("b", 9), ("c", 1)]
    # MERGE idempotency: the same batch again writes nothing and the totals stay.
    assert wh.write_batch("b2", {"event_counts": [count_row(4)]}, SPECS) is None
    assert wh.query("SELECT brand, events FROM event_counts ORDER BY brand") == [("b", 9), ("c", 1)]
    assert [(b.batch_id, b.status) for b in wh.batches()] == [("b1", "applied"), ("b2", "applied")]


def test_select_where_in_finds_exactly_the_matching_rows(backend):
    wh = backend.wh
    backend.record("b1", 1)
    wh.write_batch("b1", {"event_counts": [count_row(2, "b"), count_row(5, "c"),
                                           count_row(7, "d")]}, SPECS)
    rows = wh.select_where_in("event_counts", "brand", ["c", "d", "x", "c"], ("brand", "events"))
    assert sorted(rows) == [("c", 5), ("d", 7)]
    assert wh.select_where_in("event_counts", "brand", ["b", "c"], ("brand",),
                              where="events > 3") == [("c",)]
    assert wh.select_where_in("event_counts", "brand", [], ("brand",)) == []


def test_replace_keeps_the_newest_row_and_ignore_the_first(backend):
    wh = backend.wh
    ids = [{"event_id": "e1", "topic": "t", "partition": 0, "offset": 7, "event_time": 1}]
    backend.record("b1", 1)
    assert wh.write_batch("b1", {"dead_letters": [dead_letter("first")],
                                 "_cx360_event_ids": ids}, SPECS) == {
        "dead_letters": 1, "_cx360_event_ids": 1}
    backend.record("b2", 2)
    wh.write_batch("b2", {"dead_letters": [dead_letter("second")],
                          "_cx360_event_ids": [dict(ids[0], offset=99),
                                               dict(ids[0], event_id="e2", offset=8)]}, SPECS)
    # replace: the dead letter now says "second"; ignore: e1 keeps offset 7 from b1.
    assert wh.query("SELECT detail, value FROM dead_letters") == [("second", b"\x00\xff")]
    assert wh.seen_event_ids(["e1", "e2", "e3"]) == {"e1": ("t", 0, 7), "e2": ("t", 0, 8)}
    assert wh.seen_event_ids([]) == {}


def test_a_failing_batch_writes_nothing_stays_pending_and_can_be_rerun(backend):
    wh = backend.wh
    backend.record("b1")
    bad = dead_letter(stage=None)  # stage is NOT NULL / REQUIRED
    with pytest.raises(FAILURES[backend.name]) as failure:
        wh.write_batch("b1", {"event_counts": [count_row(5)], "dead_letters": [bad]}, SPECS)
    if backend.name == "bigquery":  # BigQuery names the row and says why, in its own words
        [rejected] = failure.value.rejected
        assert (rejected.table, rejected.row["dead_letter_id"], rejected.message) == (
            "dead_letters", "t/0/1", "Missing required field: stage.")
    assert wh.query("SELECT count(*) FROM event_counts") == [(0,)]
    assert wh.query("SELECT count(*) FROM dead_letters") == [(0,)]
    assert [b.status for b in wh.batches()] == ["pending"]
    # The re-run with the row fixed counts 5 once (on BigQuery the first attempt's staged rows
    # belong to another stage and are not merged).
    assert wh.write_batch("b1", {"event_counts": [count_row(5)], "dead_letters": [dead_letter()]},
                          SPECS) == {"event_counts": 1, "dead_letters": 1}
    assert wh.query("SELECT brand, events FROM event_counts") == [("b", 5)]


def test_writing_an_unrecorded_batch_is_refused(backend):
    with pytest.raises(WarehouseError, match="never recorded"):
        backend.wh.write_batch("nope", {}, SPECS)


def test_the_ledger_keeps_ranges_and_statuses_in_creation_order(backend):
    wh = backend.wh
    later = Batch("b2", 20, "pending", [PartitionRange("t", 0, 10, 20),
                                        PartitionRange("t", 1, 0, None)])
    wh.record_batch(later)
    wh.record_batch(Batch("b1", 10, "pending", [PartitionRange("t", 0, 0, 10)]))
    wh.set_batch_status("b1", "committed")
    assert [(b.batch_id, b.status) for b in wh.batches()] == [("b1", "committed"),
                                                               ("b2", "pending")]
    assert wh.batches("pending") == [later]


def test_a_new_nullable_column_is_added_to_an_existing_table(backend):
    base = dataclasses.replace(EVENT_COUNTS, name="evolving_counts")
    specs = {base.name: base}
    backend.wh.ensure_tables([base])
    backend.record("b1", 1)
    backend.wh.write_batch("b1", {base.name: [count_row(1)]}, specs)
    wider = dataclasses.replace(base, columns=base.columns + (
        C("reach", "INT64", "new in a later release"),))
    wh = backend.reopen()
    wh.ensure_tables([wider])
    assert wh.query("SELECT events, reach FROM evolving_counts") == [(1, None)]
    backend.record("b2", 2)
    assert wh.write_batch("b2", {wider.name: [dict(count_row(2, "c"), reach=7)]},
                          {wider.name: wider}) == {wider.name: 1}
    assert wh.query("SELECT brand, events, reach FROM evolving_counts ORDER BY brand") == [
        ("b", 1, None), ("c", 2, 7)]


def test_every_type_round_trips(backend):
    wh = backend.wh
    rows = [
        {"id": "a", "n": 2 ** 62 + 1, "x": 0.1, "flag": True, "at": 1_700_000_000_123,
         "blob": bytes(range(256))},
        {"id": "b", "n": -1, "x": float("inf"), "flag": False, "at": -1, "blob": b""},
        {"id": "c", "n": None, "x": None, "flag": None, "at": 0, "blob": None},
        {"id": "d", "n": 0, "x": -2.5, "flag": True, "at": 86_400_000, "blob": b"\x00"},
    ]
    backend.record("b1")
    wh.write_batch("b1", {ALL_TYPES.name: rows}, SPECS)
    got = wh.query(f"SELECT id, n, x, flag, {backend.q('at')}, blob FROM contract_all_types "
                   "ORDER BY id")
    assert [(i, n, x, f, ms(at), None if b is None else bytes(b)) for i, n, x, f, at, b in got
            ] == [tuple(r.values()) for r in rows]
    # 1_700_000_000_123 ms is 2023-11-14 22:13:20.123 UTC; -1 ms is the last ms of 1969.
    first = got[0][4].replace(tzinfo=got[0][4].tzinfo or dt.timezone.utc)
    assert first.isoformat() == "2023-11-14T22:13:20.123000+00:00"


# -- BigQuery specifics ----------------------------------------------------------------------
@pytest.mark.services
def test_bigquery_tables_are_partitioned_by_day_and_clustered(bq):
    table = bq.client.get_table(bq.table_id("event_counts"))
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY",
                                                                              "window_start")
    assert table.clustering_fields == ["event_kind", "brand", "channel"]
    assert {f.name: f.mode for f in table.schema}["events"] == "REQUIRED"
    stage = bq.client.get_table(bq.table_id(STAGE_PREFIX + "event_counts"))
    assert (stage.time_partitioning.type_, stage.time_partitioning.field,
            stage.time_partitioning.expiration_ms) == ("HOUR", "_cx360_staged_at", 86_400_000)
    assert stage.clustering_fields == ["_cx360_stage_id"]


@pytest.mark.services
def test_bigquery_checks_known_tables_with_one_listing_and_patches_changed_ones(
        bq, monkeypatch):
    """Tables carry a label with a hash of their schema: a start whose tables are current
    sends one tables.list and nothing else; a spec with a new column gets that table and its
    staging table patched (and relabelled), the others are left alone."""
    from cx360.transforms.warehouse.bigquery_backend import SCHEMA_LABEL

    calls = []
    real_call = bq._call

    def recording_call(fn, *args, what="", **kwargs):
        calls.append(what)
        return real_call(fn, *args, what=what, **kwargs)

    monkeypatch.setattr(bq, "_call", recording_call)
    spec = dataclasses.replace(ALL_TYPES, name="labelled_types")
    stage = STAGE_PREFIX + spec.name
    bq.ensure_tables([spec])
    assert calls == ["list tables", f"create table {spec.name}", f"create table {stage}"]
    calls.clear()
    bq.ensure_tables([EVENT_COUNTS, spec])   # event_counts: made by the fixture
    assert calls == ["list tables"]
    wider = dataclasses.replace(spec, columns=spec.columns + (
        C("note", "STRING", "new in a later release"),))
    calls.clear()
    bq.ensure_tables([EVENT_COUNTS, wider])
    assert calls == ["list tables", f"get table {spec.name}", f"patch table {spec.name}",
                     f"get table {stage}", f"patch table {stage}"]
    table = bq.client.get_table(bq.table_id(spec.name))
    assert [f.name for f in table.schema][-1] == "note"
    assert len(table.labels[SCHEMA_LABEL]) == 32
    calls.clear()
    bq.ensure_tables([EVENT_COUNTS, wider])
    assert calls == ["list tables"]


@pytest.mark.services
def test_bigquery_keeps_one_row_per_insert_id(bq):
    table = STAGE_PREFIX + ALL_TYPES.name

    def staged(id_, n):
        return {"id": id_, "n": str(n), "at": "2024-01-01T00:00:00.000Z",
                "_cx360_stage_id": "dedup", "_cx360_row_id": id_,
                "_cx360_staged_at": dt.datetime.now(dt.timezone.utc).isoformat()}

    assert bq.insert_rows(table, [staged("d1", 1), staged("d2", 2)], ["i1", "i2"]) == []
    # The same insertIds again, once even with another value: BigQuery keeps the first.
    assert bq.insert_rows(table, [staged("d1", 1), staged("d2", 20)], ["i1", "i2"]) == []
    # The same row under a new insertId is a new row.
    assert bq.insert_rows(table, [staged("d1", 1)], ["i3"]) == []
    assert bq.query(f"SELECT id, n FROM `{table}` WHERE _cx360_stage_id = 'dedup' "
                    "ORDER BY id, n") == [("d1", 1), ("d1", 1), ("d2", 2)]


@pytest.mark.services
def test_bigquery_retries_a_lost_response_and_the_rows_land_once(bq, monkeypatch):
    real, calls = bq.client.insert_rows_json, []

    def response_lost_once(table, rows, **kwargs):
        calls.append(len(rows))
        errors = real(table, rows, **kwargs)  # BigQuery stored the rows ...
        if len(calls) == 1:
            raise gexc.ServiceUnavailable("connection reset")  # ... the answer got lost
        return errors

    monkeypatch.setattr(bq.client, "insert_rows_json", response_lost_once)
    bq.record_batch(Batch("b1", 1, "pending", []))
    assert bq.write_batch("b1", {"event_counts": [count_row(2, "lost-b"), count_row(3, "lost-c")]},
                          SPECS) == {"event_counts": 2}
    assert calls == [2, 2]  # sent twice with the same insertIds
    assert bq.query(f"SELECT brand, count(*) FROM `{STAGE_PREFIX}event_counts` "
                    "WHERE brand LIKE 'lost-%' GROUP BY brand ORDER BY brand") == [
        ("lost-b", 1), ("lost-c", 1)]
    assert bq.query("SELECT brand, events FROM event_counts ORDER BY brand") == [
        ("lost-b", 2), ("lost-c", 3)]


@pytest.mark.services
def test_bigquery_hands_back_a_bad_row_with_its_message_for_the_dead_letters(bq, monkeypatch):
    real, calls = bq.client.insert_rows_json, []
    monkeypatch.setattr(bq.client, "insert_rows_json",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    bq.record_batch(Batch("b1", 1, "pending", []))
    handed = []

    def dead_letter_them(rejected):
        handed.extend(rejected)
        return {"dead_letters": rejected_to_dead_letters(rejected, "b1", failed_at_ms=1_000)}

    written = bq.write_batch(
        "b1", {"event_counts": [count_row(2), dict(count_row(1, "c"), events="many")]}, SPECS,
        on_rejected=dead_letter_them)
    message = "Cannot convert value to integer (bad value): many"  # BigQuery's own wording
    assert [(r.table, r.row["brand"], r.reason, r.message) for r in handed] == [
        ("event_counts", "c", "invalid", message)]
    assert calls == [1, 1]  # one insert for the counts (`invalid` is not retried), one for the DL
    assert written == {"event_counts": 1, "dead_letters": 1}
    assert bq.query("SELECT brand, events FROM event_counts") == [("b", 2)]
    [(stage, reason, detail, value)] = bq.query(
        "SELECT stage, reason, detail, value FROM dead_letters")
    assert (stage, reason, detail) == (
        "write", "warehouse_rejected", f"BigQuery invalid: {message}")
    assert json.loads(value)["events"] == "many"
    assert [b.status for b in bq.batches()] == ["applied"]


@pytest.mark.services
def test_bigquery_a_statement_failing_inside_the_transaction_rolls_back_every_table(bq):
    doomed = dataclasses.replace(DEAD_LETTERS, name="zz_doomed")  # merged after event_counts
    specs = dict(SPECS, zz_doomed=doomed)
    bq.ensure_tables([doomed])
    bq.client.delete_table(bq.table_id("zz_doomed"))  # staging stays: the MERGE step will fail
    bq.record_batch(Batch("b1", 1, "pending", []))
    with pytest.raises(gexc.NotFound):
        bq.write_batch("b1", {"event_counts": [count_row(4)], "zz_doomed": [dead_letter()]},
                       specs)
    assert bq.query("SELECT count(*) FROM event_counts") == [(0,)]
    assert [b.status for b in bq.batches()] == ["pending"]


@pytest.mark.services
def test_bigquery_insert_ids_are_deterministic_for_the_same_batch(bq):
    rows = {"event_counts": [count_row(2), count_row(1, "c")]}
    reordered = {"event_counts": [count_row(1, "c"), count_row(2)]}
    stage, plan = bq._plan("b1", rows, SPECS)
    assert bq._plan("b1", reordered, SPECS)[0] == stage
    assert sorted(s.row_id for s in plan["event_counts"]) == sorted(
        s.row_id for s in bq._plan("b1", reordered, SPECS)[1]["event_counts"])
    assert bq._plan("b2", rows, SPECS)[0] != stage
    assert bq._plan("b1", {"event_counts": [count_row(3), count_row(1, "c")]}, SPECS)[0] != stage


def test_bigquery_retries_transient_errors_only():
    assert is_transient(gexc.ServiceUnavailable("x"))
    assert is_transient(gexc.TooManyRequests("x"))
    assert is_transient(gexc.InternalServerError("x"))
    assert is_transient(gexc.Forbidden("quota", errors=[{"reason": "rateLimitExceeded"}]))
    assert is_transient(gexc.BadRequest("x", errors=[{"reason": "backendError"}]))
    assert is_transient(ConnectionError())
    assert not is_transient(gexc.BadRequest("x", errors=[{"reason": "invalid"}]))
    assert not is_transient(gexc.InternalServerError("x", errors=[{"reason": "invalid"}]))
    assert not is_transient(gexc.NotFound("x"))
    policy = RetryPolicy(initial_s=1, max_s=8)
    for attempt, ceiling in [(0, 1), (1, 2), (2, 4), (3, 8), (6, 8)]:
        assert all(ceiling / 2 <= policy.delay(attempt) <= ceiling for _ in range(50))


# -- PostgreSQL specifics --------------------------------------------------------------------
@pytest.mark.services
def test_postgres_password_comes_from_the_url_or_pgpassword_and_is_never_shown(
        postgres_server, monkeypatch):
    secret = postgres_server.password
    with_password = postgres_server.url.replace("@", f":{secret}@", 1)
    with open_warehouse(with_password) as wh:
        assert secret not in wh.url and wh.query("SELECT 1") == [(1,)]
    monkeypatch.setenv("PGPASSWORD", secret)
    with open_warehouse(postgres_server.url) as wh:
        assert wh.query("SELECT 1") == [(1,)]
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(WarehouseError, match="password authentication failed") as failure:
        open_warehouse(postgres_server.url.replace("@", ":wrong-secret@", 1))
    assert "wrong-secret" not in str(failure.value)
    # `cx360 run` prints and logs the warehouse URL: never with its password.
    from cx360.pipelines.run_cmd import summarize
    from cx360.transforms.warehouse import display_url

    shown = summarize([], 1.0, with_password)["warehouse"]
    assert secret not in shown and shown == display_url(with_password)
    assert shown.startswith("postgresql://") and ":***@" in shown
