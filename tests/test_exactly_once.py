"""Crashes, restarts, signals and a paused broker: the warehouse must end exactly as after one
uninterrupted run over the same data."""
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from cx360.pipelines.broker import LocalBroker, free_port
from cx360.pipelines.topics_cmd import create_topics
from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import SOCIAL, SURVEY, WEB, FileSchemaRegistry
from cx360.transforms.kafka_io import KafkaConfig
from kafka_helpers import produce

CODEC = AvroCodec(FileSchemaRegistry())
BASE = 1_795_300_000_000  # 2026-11-21 21:46 UTC


def stream(n: int, seed: int):
    """n records (kind, key, value, fate) over the three kinds: 1% malformed, 1% re-sent,
    spread over 30 hours. ``fate`` is the event id of a valid event, or None for a record
    that must become a dead letter (an NPS of 11 included). Identity material too: logins of
    60 accounts with their e-mail on 400 cookies (so some cookies are shared), account links
    to social handles, surveys with an e-mail and a cookie; event times are random, so late
    sightings of a link arrive after later ones."""
    rng = random.Random(seed)
    out, sent = [], []
    for i in range(n):
        roll = rng.random()
        if roll < 0.01 and sent:
            out.append(rng.choice(sent))           # a duplicate: same key, same bytes
            continue
        t = BASE + rng.randrange(30 * 3_600_000)
        kind = ("social", "web", "survey")[i % 3]
        if roll < 0.02:
            value = rng.choice([b"\x00\x00\x00\x27\x0f\x01", b"{oops", b"plain text", None])
        elif kind == "social":
            value = CODEC.encode(SOCIAL, {
                "event_id": f"s{i}", "event_type": rng.choice(["post", "mention"]),
                "event_time": t, "platform": rng.choice(["x", "instagram"]),
                "brand": rng.choice(["Nordwind", "Kaffeeklatsch", None]),
                "author_handle": f"@u{rng.randrange(500)}", "post_id": f"s{i}"})
        elif kind == "web":
            event = {
                "event_id": f"w{i}", "event_type": rng.choice(["page_view", "product_view"]),
                "event_time": t, "brand": rng.choice(["Nordwind", "Lumera"]),
                "session_id": f"s{rng.randrange(900)}", "cookie_id": f"c{rng.randrange(400)}",
                "device": rng.choice(["mobile", "desktop"])}
            who = rng.randrange(60)
            if roll < 0.25:
                event.update(event_type="login", account_id=f"A-{who:08d}",
                             email=f"user{who}@example.org")
            elif roll < 0.28:
                event.update(event_type="account_link", account_id=f"A-{who:08d}",
                             social_platform="x", social_handle=f"@u{who * 7}")
            value = CODEC.encode(WEB, event)
        else:
            score = rng.randrange(12)  # 11 is invalid
            event = {"event_id": f"v{i}", "event_time": t, "brand": "Nordwind", "survey_id": "q",
                     "survey_type": "NPS", "score": score}
            if roll < 0.3:
                event.update(email=f"user{rng.randrange(80)}@example.org",
                             cookie_id=f"c{rng.randrange(400)}")
            value = CODEC.encode(SURVEY, event)
        valid = roll >= 0.02 and not (kind == "survey" and score == 11)
        record = (kind, f"k{rng.randrange(50)}".encode(), value, f"{kind[0]}{i}" if valid else None)
        sent.append(record)
        out.append(record)
    return out


def topic_args(topics, bootstrap):
    return ["--social-topic", topics["social"], "--web-topic", topics["web"],
            "--survey-topic", topics["survey"], "--dead-letter-topic", topics["dead_letter"],
            "--bootstrap-servers", bootstrap]


def cx360(*args):
    return [sys.executable, "-m", "cx360.pipelines.cli", *args]


def drain(topics, bootstrap, warehouse):
    """`run --once` until nothing is new (it also finishes any pending batch)."""
    for _ in range(10):
        done = subprocess.run(cx360("run", "--once", "--json", "--warehouse", f"duckdb:{warehouse}",
                                    *topic_args(topics, bootstrap)),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        if json.loads(done.stdout.splitlines()[-1])["records_read"] == 0:
            return
    raise AssertionError("never caught up")


def dump(warehouse):
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {
            "event_counts": con.execute("SELECT * FROM event_counts ORDER BY ALL").fetchall(),
            # batch_id and failed_at name the batch that happened to read a record.
            "dead_letters": con.execute(
                "SELECT * EXCLUDE (batch_id, failed_at) FROM dead_letters ORDER BY ALL").fetchall(),
            "event_ids": con.execute("SELECT * FROM _cx360_event_ids ORDER BY ALL").fetchall(),
            # Identity: batch_id/updated_at name the batch; identity_merges records key
            # CHANGES, which depend on where batches were cut (a clean run that sees both
            # sides at once merges nothing), so it is not compared; the resulting map is.
            "identity_links": con.execute("SELECT * EXCLUDE (batch_id) FROM identity_links "
                                          "ORDER BY ALL").fetchall(),
            "identity_map": con.execute("SELECT * EXCLUDE (batch_id, updated_at) FROM "
                                        "identity_map ORDER BY ALL").fetchall(),
            "customer_touchpoints": con.execute("SELECT * FROM customer_touchpoints "
                                                "ORDER BY ALL").fetchall(),
            "customer_360": con.execute("SELECT * FROM customer_360 ORDER BY ALL").fetchall(),
            "pending": con.execute("SELECT count(*) FROM _cx360_batches WHERE status <> "
                                   "'committed'").fetchall(),
        }
    finally:
        con.close()


def produce_stream(kafka, topics, records, chunks: int, pause_s: float):
    size = -(-len(records) // chunks)
    for start in range(0, len(records), size):
        for kind in ("social", "web", "survey"):
            part = [(k, v) for role, k, v, _ in records[start:start + size] if role == kind]
            produce(kafka, topics[kind], part)
        time.sleep(pause_s)


@pytest.mark.slow
def test_random_sigkills_during_a_stream_leave_the_warehouse_of_a_clean_run(kafka, topics,
                                                                            tmp_path):
    records = stream(20_000, seed=7)
    rng = random.Random(2026)
    warehouse = tmp_path / "killed.duckdb"
    producer = threading.Thread(target=produce_stream, args=(kafka, topics, records, 40, 0.4))
    producer.start()
    kills, recoveries, logs = 0, 0, []
    while kills < 6 or producer.is_alive():
        proc = subprocess.Popen(
            cx360("run", "--interval", "0.2", "--max-batch-records", "600", "--json",
                  "--warehouse", f"duckdb:{warehouse}", *topic_args(topics, kafka.bootstrap_servers)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Kill while batches are running: after the first batch summary (start-up takes a
        # few seconds on a busy machine; a kill before any batch would test nothing).
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        try:
            lines.get(timeout=60)
        except queue.Empty:
            pass
        time.sleep(rng.uniform(0.1, 2.5))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        kills += 1
        recoveries += err.count("recovering batch")
        logs.append(err)
    producer.join()
    drain(topics, kafka.bootstrap_servers, warehouse)

    clean = tmp_path / "clean.duckdb"
    drain(topics, kafka.bootstrap_servers, clean)

    killed_state, clean_state = dump(warehouse), dump(clean)
    assert kills >= 5
    # At least one kill landed inside a batch, which a later run had to recover.
    assert recoveries >= 1, "\n".join(logs)
    assert killed_state["pending"] == [(0,)]
    assert killed_state == clean_state
    # The identity comparison is not vacuous: many links, shared cookies, linked handles.
    assert len(clean_state["identity_links"]) > 300
    assert any(row[3] for row in clean_state["identity_map"])               # shared
    assert any(row[1] == "sh" for row in clean_state["identity_map"])
    # And both saw everything: each valid event once, each bad record as a dead letter.
    con = duckdb.connect(str(clean), read_only=True)
    unique = con.execute("SELECT count(*) FROM _cx360_event_ids").fetchone()[0]
    counted = con.execute("SELECT sum(events) FROM event_counts WHERE window_seconds = 3600"
                          ).fetchone()[0]
    dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    con.close()
    valid_ids = {fate for *_, fate in records if fate}
    assert unique == counted == len(valid_ids)
    assert dead == sum(1 for *_, fate in records if fate is None)


def _reader(stream_, lines: queue.Queue):
    for line in iter(stream_.readline, ""):
        lines.put(line)


@pytest.mark.slow
def test_continuous_mode_processes_new_data_and_stops_cleanly_on_sigterm(kafka, topics,
                                                                         tmp_path):
    warehouse = tmp_path / "w.duckdb"
    proc = subprocess.Popen(
        cx360("run", "--interval", "0.2", "--json", "--warehouse", f"duckdb:{warehouse}",
              *topic_args(topics, kafka.bootstrap_servers)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()

    def next_summary(timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                summary = json.loads(lines.get(timeout=1))
            except queue.Empty:
                continue
            if summary["records_read"]:
                return summary
        raise AssertionError("no batch summary")

    try:
        wave = lambda first, n: [(b"k", CODEC.encode(SOCIAL, {
            "event_id": f"c{i}", "event_type": "post", "event_time": BASE + i * 60_000,
            "platform": "x", "author_handle": "@a", "post_id": f"c{i}"}))
            for i in range(first, first + n)]
        produce(kafka, topics["social"], wave(0, 100))
        assert next_summary()["records_read"] == 100
        produce(kafka, topics["social"], wave(100, 50))
        assert next_summary()["records_read"] == 50
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "SIGTERM received" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    con = duckdb.connect(str(warehouse), read_only=True)
    assert con.execute("SELECT sum(events) FROM event_counts WHERE window_seconds = 86400"
                       ).fetchone()[0] == 150
    con.close()


@pytest.mark.slow
def test_a_paused_broker_delays_the_run_but_loses_nothing(tmp_path):
    broker = LocalBroker(port=free_port(), home=tmp_path / "broker")
    broker.start()
    try:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
        topics = {"social": "p.social", "web": "p.web", "survey": "p.survey",
                  "dead_letter": "p.dl"}
        create_topics(kafka, topics, partitions=3)
        records = stream(6_000, seed=3)
        produce_stream(kafka, topics, records, 1, 0)
        warehouse = tmp_path / "w.duckdb"
        proc = subprocess.Popen(
            cx360("run", "--once", "--json", "--warehouse", f"duckdb:{warehouse}",
                  *topic_args(topics, broker.bootstrap)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)  # inside start-up, planning or reading
        os.kill(broker.pid(), signal.SIGSTOP)
        time.sleep(6)
        os.kill(broker.pid(), signal.SIGCONT)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        summary = json.loads(out.splitlines()[-1])
        assert summary["records_read"] == 6_000 and summary["reconciled"]

        clean = tmp_path / "clean.duckdb"
        drain(topics, broker.bootstrap, clean)
        assert dump(warehouse) == dump(clean)
    finally:
        broker.stop()
