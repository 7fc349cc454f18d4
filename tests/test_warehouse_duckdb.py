"""DuckDB warehouse: merge modes, the batch ledger's all-or-nothing writes, schema evolution."""
import dataclasses

import duckdb
import pytest

from cx360.transforms.kafka_io import PartitionRange
from cx360.transforms.warehouse import Batch, WarehouseError, open_warehouse
from cx360.transforms.warehouse.base import merge_intervals, subtract_intervals
from cx360.transforms.warehouse.spec import DEAD_LETTERS, EVENT_COUNTS, EVENT_IDS, C, TableSpec

SPECS = {s.name: s for s in (EVENT_COUNTS, DEAD_LETTERS, EVENT_IDS)}


def count_row(events, brand="b", start=0):
    return {"window_start": start, "window_end": start + 3_600_000, "window_seconds": 3600,
            "event_kind": "social", "topic": "t", "event_type": "post", "brand": brand,
            "channel": "x", "events": events}


@pytest.fixture()
def wh(tmp_path):
    warehouse = open_warehouse(f"duckdb:{tmp_path}/w.duckdb")
    warehouse.ensure_tables(SPECS.values())
    yield warehouse
    warehouse.close()


def record(wh, batch_id):
    wh.record_batch(Batch(batch_id, 1, "pending", [PartitionRange("t", 0, 0, 10)]))


def test_additive_merge_across_batches_and_within_one(wh):
    record(wh, "b1")
    assert wh.write_batch("b1", {"event_counts": [count_row(2), count_row(3), count_row(1, "c")]},
                          SPECS) == {"event_counts": 2}
    record(wh, "b2")
    wh.write_batch("b2", {"event_counts": [count_row(4)]}, SPECS)
    assert wh.query("SELECT brand, events FROM event_counts ORDER BY brand") == [("b", 9), ("c", 1)]


def test_an_applied_batch_is_never_written_twice(wh):
    record(wh, "b1")
    wh.write_batch("b1", {"event_counts": [count_row(2)]}, SPECS)
    assert wh.write_batch("b1", {"event_counts": [count_row(2)]}, SPECS) is None
    assert wh.query("SELECT events FROM event_counts") == [(2,)]
    assert [b.status for b in wh.batches()] == ["applied"]


def test_a_failing_write_leaves_nothing_behind(wh):
    record(wh, "b1")
    bad = dict(count_row(1), window_seconds=None)  # NOT NULL column
    with pytest.raises(duckdb.Error):
        wh.write_batch("b1", {"event_counts": [count_row(5), bad]}, SPECS)
    assert wh.query("SELECT count(*) FROM event_counts") == [(0,)]
    assert wh.batches("pending")[0].batch_id == "b1"


def test_replace_and_ignore_modes(wh):
    dead = {"dead_letter_id": "t/0/1", "topic": "t", "partition": 0, "offset": 1,
            "kafka_timestamp": 5, "key": b"k", "value": b"\x00\xff", "stage": "decode",
            "reason": "undecodable", "detail": "first", "schema_id": None, "batch_id": "b1",
            "failed_at": 10}
    ids = [{"event_id": "e1", "topic": "t", "partition": 0, "offset": 7, "event_time": 1}]
    record(wh, "b1")
    wh.write_batch("b1", {"dead_letters": [dead], "_cx360_event_ids": ids}, SPECS)
    record(wh, "b2")
    wh.write_batch("b2", {"dead_letters": [dict(dead, detail="second")],
                          "_cx360_event_ids": [dict(ids[0], offset=99)]}, SPECS)
    assert wh.query("SELECT detail, value FROM dead_letters") == [("second", b"\x00\xff")]
    assert wh.seen_event_ids(["e1", "e2"]) == {"e1": ("t", 0, 7)}


def test_writing_an_unrecorded_batch_is_refused(wh):
    with pytest.raises(WarehouseError):
        wh.write_batch("nope", {}, SPECS)


def test_new_nullable_column_is_added_to_an_existing_table(tmp_path):
    url = f"duckdb:{tmp_path}/w.duckdb"
    with open_warehouse(url) as wh:
        wh.ensure_tables([EVENT_COUNTS])
        record(wh, "b1")
        wh.write_batch("b1", {"event_counts": [count_row(1)]}, SPECS)
    wider = dataclasses.replace(EVENT_COUNTS, columns=EVENT_COUNTS.columns + (
        C("reach", "INT64", "new in a later release"),))
    with open_warehouse(url) as wh:
        wh.ensure_tables([wider])
        assert wh.query("SELECT events, reach FROM event_counts") == [(1, None)]


def test_read_only_and_bad_urls(tmp_path):
    with pytest.raises(WarehouseError):
        open_warehouse(f"duckdb:{tmp_path}/missing.duckdb", read_only=True)
    with pytest.raises(WarehouseError):
        open_warehouse("mysql://x")
    with pytest.raises(WarehouseError):
        open_warehouse("duckdb:")


def test_interval_arithmetic():
    assert merge_intervals([(5, 9), (0, 3), (3, 5), (20, 22), (21, 25)]) == [(0, 9), (20, 25)]
    assert subtract_intervals(0, 30, [(0, 9), (20, 25)]) == [(9, 20), (25, 30)]
    assert subtract_intervals(0, 9, [(0, 9)]) == []
    assert subtract_intervals(10, 15, []) == [(10, 15)]


def test_spec_validation():
    with pytest.raises(ValueError):
        TableSpec("x", (C("a", "INT64"),), key=("b",))
    with pytest.raises(ValueError):
        TableSpec("x", (C("a", "INT64"),), key=("a",), merge="add")


def test_pending_batches_claim_their_offsets(wh):
    """A batch left pending by a crash is re-run first: its offsets are not free to plan."""
    wh.record_batch(Batch("b1", 1, "pending", [PartitionRange("t", 0, 0, 10)]))
    wh.record_batch(Batch("b2", 2, "pending", [PartitionRange("t", 0, 10, 25),
                                               PartitionRange("t", 1, 0, 5)]))
    wh.write_batch("b2", {}, SPECS)
    assert wh.claimed_intervals() == {("t", 0): [(0, 25)], ("t", 1): [(0, 5)]}


# --- the read-only BI snapshot -------------------------------------------------------------------

def _snapshot_events(path):
    """sum(events) read by another process (a BI tool), or the error it got."""
    import subprocess
    import sys

    code = ("import duckdb, sys\n"
            "try:\n"
            "    con = duckdb.connect(sys.argv[1], read_only=True)\n"
            "    print(con.execute('SELECT sum(events) FROM event_counts').fetchone()[0])\n"
            "except duckdb.IOException as exc:\n"
            "    print('IOException', exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    return int(out) if out.isdigit() else out


def test_snapshot_is_published_on_close_and_readable_while_the_writer_holds_the_file(tmp_path):
    from cx360.transforms.warehouse.spec import TABLES

    writer = open_warehouse(f"duckdb:{tmp_path}/w.duckdb")
    writer.ensure_tables(TABLES.values())
    writer.ensure_views()
    assert writer.snapshot_path == str(tmp_path / "w-bi.duckdb")
    record(writer, "b1")
    writer.write_batch("b1", {"event_counts": [count_row(2)]}, SPECS)
    assert not (tmp_path / "w-bi.duckdb").exists()      # at most every 60 s: not yet
    writer.close()                                        # ... but always on close
    assert _snapshot_events(tmp_path / "w-bi.duckdb") == 2

    writer = open_warehouse(f"duckdb:{tmp_path}/w.duckdb?snapshot_every_s=0")
    record(writer, "b2")
    writer.write_batch("b2", {"event_counts": [count_row(5)]}, SPECS)
    # The live file is locked by the writer; the snapshot is not, and has the new batch.
    assert "lock" in _snapshot_events(tmp_path / "w.duckdb")
    assert _snapshot_events(tmp_path / "w-bi.duckdb") == 7
    # Views and macros travel with the tables.
    con = duckdb.connect(str(tmp_path / "w-bi.duckdb"), read_only=True)
    views = {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    con.close()
    assert {"kpi_social", "kpi_survey", "customer_360"} <= views
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-bi.duckdb", "w.duckdb"]


def test_exclusive_snapshot_copies_the_checkpointed_file(tmp_path):
    """publish_snapshot(exclusive=True) (the parallel mode's writer) copies the file after a
    CHECKPOINT instead of COPY FROM DATABASE: the same tables, views and committed rows."""
    from cx360.transforms.warehouse.spec import TABLES

    writer = open_warehouse(f"duckdb:{tmp_path}/w.duckdb")
    writer.ensure_tables(TABLES.values())
    writer.ensure_views()
    record(writer, "b1")
    writer.write_batch("b1", {"event_counts": [count_row(2)]}, SPECS)
    assert writer.publish_snapshot(exclusive=True) == str(tmp_path / "w-bi.duckdb")
    assert _snapshot_events(tmp_path / "w-bi.duckdb") == 2
    record(writer, "b2")
    writer.write_batch("b2", {"event_counts": [count_row(5)]}, SPECS)
    assert _snapshot_events(tmp_path / "w-bi.duckdb") == 2          # not published yet
    writer.publish_snapshot(exclusive=True)
    assert _snapshot_events(tmp_path / "w-bi.duckdb") == 7
    con = duckdb.connect(str(tmp_path / "w-bi.duckdb"), read_only=True)
    views = {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    status = con.execute("SELECT batch_id, status FROM _cx360_batches ORDER BY 1").fetchall()
    con.close()
    assert {"kpi_social", "kpi_survey", "customer_360"} <= views
    assert status == [("b1", "applied"), ("b2", "applied")]
    writer.close(publish=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-bi.duckdb", "w.duckdb"]


def test_snapshot_off_and_custom_path(tmp_path):
    off = open_warehouse(f"duckdb:{tmp_path}/a.duckdb?snapshot=off")
    off.ensure_tables(SPECS.values())
    record(off, "b1")
    off.write_batch("b1", {"event_counts": [count_row(1)]}, SPECS)
    off.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.duckdb"]
    custom = open_warehouse(f"duckdb:{tmp_path}/b.duckdb?snapshot={tmp_path}/bi/x.duckdb")
    custom.ensure_tables(SPECS.values())
    record(custom, "b1")
    custom.write_batch("b1", {"event_counts": [count_row(3)]}, SPECS)
    custom.close()
    assert _snapshot_events(tmp_path / "bi" / "x.duckdb") == 3
    with pytest.raises(WarehouseError, match="unknown DuckDB URL option"):
        open_warehouse(f"duckdb:{tmp_path}/c.duckdb?snapshots=off")
