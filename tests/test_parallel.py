"""The local parallel mode (pipelines/parallel.py) must write exactly what the single Beam job
writes, including for duplicates whose copies are read by different worker processes."""
import json
import os
import random
import signal
import subprocess
import sys

import duckdb

from cx360.pipelines.parallel import new_spool, remove_orphaned_spools, split_ranges
from cx360.transforms.kafka_io import PartitionRange
from kafka_helpers import produce
from test_exactly_once import cx360, stream, topic_args


def test_split_ranges_puts_every_offset_in_exactly_one_group():
    rng = random.Random(5)
    for _ in range(200):
        ranges = []
        for p in range(rng.randrange(1, 6)):
            start = rng.randrange(0, 1000)
            ranges.append(PartitionRange(f"t{p % 2}", p, start, start + rng.randrange(0, 3000)))
        shares = [rng.uniform(0.02, 1.0) for _ in range(rng.randrange(1, 4))]
        groups = split_ranges(ranges, shares)
        assert len(groups) == len(shares)
        got = sorted((r.topic, r.partition, o) for g in groups for r in g
                     for o in range(r.start, r.stop))
        want = sorted((r.topic, r.partition, o) for r in ranges for o in range(r.start, r.stop))
        assert got == want
        total = len(want)
        for group, share in zip(groups, shares):
            size = sum(r.stop - r.start for r in group)
            # Only the last group takes the rounding remainder; none is off by more than 1
            # offset per range it was cut from.
            assert abs(size - total * share / sum(shares)) <= len(ranges) + 1


def _dump(path):
    """Every written table, without the columns that name the batch or its clock."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_name NOT IN ('_cx360_batches', 'pipeline_health')").fetchall()]
        for table in tables:
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position", [table]).fetchall()]
            keep = [c for c in cols if "batch" not in c
                    and c not in ("failed_at", "updated_at", "merged_at")]  # batch clocks
            rows = con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in keep)} '
                               f'FROM "{table}"').fetchall()
            out[table] = sorted(tuple(round(v, 9) if isinstance(v, float) else v for v in row)
                                for row in rows)
        return out
    finally:
        con.close()


def _run(topics, bootstrap, warehouse, *extra):
    done = subprocess.run(cx360("run", "--once", "--json", "--warehouse", f"duckdb:{warehouse}",
                                "--max-batch-records", "400", *extra,
                                *topic_args(topics, bootstrap)),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.splitlines()[-1]), stderr=done.stderr)


def test_two_processes_write_what_one_job_writes(kafka, topics, tmp_path):
    records = stream(4_500, seed=11)
    for kind in ("social", "web", "survey"):
        produce(kafka, topics[kind], [(k, v) for role, k, v, _ in records if role == kind])
    # Re-sent copies of valid events in ANOTHER partition than the original's (a key change
    # upstream): the two copies are read by different processes in parallel mode.
    rng = random.Random(3)
    copies = rng.sample([r for r in records if r[3]], 60)
    for kind in ("social", "web", "survey"):
        mine = [(k, v) for role, k, v, _ in copies if role == kind]
        for partition in range(3):
            produce(kafka, topics[kind], mine[partition::3], partition=partition)

    one = _run(topics, kafka.bootstrap_servers, tmp_path / "one.duckdb", "--workers", "1")
    two = _run(topics, kafka.bootstrap_servers, tmp_path / "two.duckdb", "--workers", "2")
    total = len(records) + len(copies)
    assert one["records_read"] == two["records_read"] == total
    assert len(two["batches"]) >= 2  # the ledger decides duplicates across batches, too
    assert one["reconciled"] and two["reconciled"]
    # The worker processes log like the run itself, and leave configuration warnings to it:
    # the demo-key warning once, in the run's format (not once more per worker, unformatted).
    for run in (one, two):
        warnings = [line for line in run["stderr"].splitlines() if "DEMO key" in line]
        assert len(warnings) == 1, run["stderr"]
        assert " WARNING cx360.transforms.identity: " in warnings[0]
    assert {t: v["duplicates"] for t, v in one["topics"].items()} == \
        {t: v["duplicates"] for t, v in two["topics"].items()}

    single, parallel = _dump(tmp_path / "one.duckdb"), _dump(tmp_path / "two.duckdb")
    assert single.keys() == parallel.keys()
    for table in single:
        assert single[table] == parallel[table], table

    # And against the produced records themselves: each valid event once, each bad record
    # once as a dead letter.
    # (stream() names a valid survey event's fate "s<i>"; its event id is "v<i>".)
    valid_ids = {"v" + fate[1:] if role == "survey" else fate
                 for role, _, _, fate in records if fate}
    con = duckdb.connect(str(tmp_path / "two.duckdb"), read_only=True)
    try:
        ledger = {r[0] for r in con.execute("SELECT event_id FROM _cx360_event_ids").fetchall()}
        counted = con.execute("SELECT sum(events) FROM event_counts WHERE window_seconds = 3600"
                              ).fetchone()[0]
        dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        con.close()
    assert ledger == valid_ids
    assert counted == len(valid_ids)
    assert dead == sum(1 for *_, fate in records if fate is None)
    duplicates = sum(v["duplicates"] for v in two["topics"].values())
    assert duplicates == total - len(valid_ids) - dead

    # The BI snapshot, published once at the end of the parallel run (a copy of the
    # checkpointed file), holds every table exactly as the warehouse does; the one of the
    # single job (COPY FROM DATABASE) the same.
    assert _dump(tmp_path / "two-bi.duckdb") == parallel
    assert _dump(tmp_path / "one-bi.duckdb") == single


def test_a_new_run_removes_only_the_spools_of_killed_processes(tmp_path, monkeypatch):
    """A SIGKILLed run cannot remove its spool; the next run on the host removes it, and
    leaves the spools of live processes, of other hosts and unrelated files alone."""
    monkeypatch.setenv("CX360_SPOOL_DIR", str(tmp_path))
    script = ("import os, signal, sys; from cx360.pipelines.parallel import new_spool; "
              "path = new_spool('b-0007'); open(os.path.join(path, 'x.pkl'), 'wb').write(b'1'); "
              "print(path, flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL) if sys.argv[1] == 'kill' else sys.stdin.read()")
    killed = subprocess.run([sys.executable, "-c", script, "kill"], capture_output=True,
                            text=True)
    assert killed.returncode == -signal.SIGKILL
    orphan = killed.stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", script, "wait"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        running = live.stdout.readline().strip()
        mine = new_spool("b-0008")
        other_host = tmp_path / "cx360-spool-otherhost-1-b-0001-abc"
        other_host.mkdir()
        unrelated = tmp_path / "cx360-spool-notes"
        unrelated.mkdir()
        assert os.path.isdir(orphan) and os.path.dirname(orphan) == str(tmp_path)

        assert remove_orphaned_spools() == [orphan]
        assert not os.path.exists(orphan)
        assert all(os.path.isdir(p) for p in (running, mine, other_host, unrelated))
    finally:
        live.communicate("", timeout=30)
    # Once that process has ended too, its spool is an orphan as well.
    assert remove_orphaned_spools(str(tmp_path)) == [running]
