"""`cx360 run --once` end to end through a real broker: every dead-letter reason, the
reconciliation, exact windowed counts, idempotent re-runs and batches that share windows."""
import io
import json
import struct

import duckdb
import fastavro
import pytest

from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import DEAD_LETTER, SOCIAL, SURVEY, WEB, FileSchemaRegistry
from conftest import DATA, cli
from kafka_helpers import consume_all, produce

CODEC = AvroCodec(FileSchemaRegistry())
HOUR = 3_600_000
# A fixed past hour: windows are easy to compute by hand, and nothing is in the future.
H = 1_795_413_600_000  # 2026-11-23 06:00:00 UTC


def post(event_id, minute, brand="Nordwind", platform="instagram", event_type="post", **kw):
    return dict({"event_id": event_id, "event_type": event_type, "event_time": H + minute * 60_000,
                 "platform": platform, "brand": brand, "author_handle": "@kim",
                 "post_id": event_id}, **kw)


def survey(event_id, minute, score=9, **kw):
    return dict({"event_id": event_id, "event_time": H + minute * 60_000, "brand": "Nordwind",
                 "survey_id": "nps", "survey_type": "NPS", "score": score, "channel": "email"},
                **kw)


def web(event_id, minute, **kw):
    return dict({"event_id": event_id, "event_type": "page_view", "event_time": H + minute * 60_000,
                 "brand": "Kaffeeklatsch", "session_id": "s1", "cookie_id": "c1",
                 "device": "mobile"}, **kw)


def run_once(topics, warehouse, *extra):
    args = ["run", "--once", "--json", "--warehouse", f"duckdb:{warehouse}",
            "--social-topic", topics["social"], "--web-topic", topics["web"],
            "--survey-topic", topics["survey"], "--dead-letter-topic", topics["dead_letter"],
            "--bootstrap-servers", BOOTSTRAP[0], *extra]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


BOOTSTRAP = []


@pytest.fixture(autouse=True)
def _bootstrap(kafka):
    BOOTSTRAP[:] = [kafka.bootstrap_servers]


def dump(warehouse):
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in ("event_counts", "dead_letters", "_cx360_event_ids")}
    finally:
        con.close()


def test_every_dead_letter_reason_round_trip(kafka, topics, tmp_path):
    social, survey_topic, web_topic = topics["social"], topics["survey"], topics["web"]
    good_post = CODEC.encode(SOCIAL, post("p1", 5))
    sent_social = produce(kafka, social, [
        (b"p1", good_post),
        (b"p2", CODEC.encode(SOCIAL, post("p2", 20, platform="x"))),
        (b"p3", CODEC.encode(SOCIAL, post("p3", 65))),                    # next hour
        (b"p1", good_post),                                               # duplicate
        (b"r1", CODEC.encode(SURVEY, survey("v0", 1))),                   # wrong kind here
        (b"x", b"\x00" + struct.pack(">I", 9999) + b"\x02\x04"),         # unknown schema id
        (b"x", b"\x00\x00\x00\x00\x01\x06ab"),                            # truncated Avro
    ], partition=0)
    sent_survey = produce(kafka, survey_topic, [
        (b"a", CODEC.encode(SURVEY, survey("v1", 10))),
        (b"b", json.dumps(survey("v2", 11, score=3)).encode()),          # JSON is accepted
        (b"c", CODEC.encode(SURVEY, survey("v3", 12, score=11))),        # NPS 11
        (b"d", json.dumps({k: v for k, v in survey("v4", 13).items()
                           if k != "event_id"}).encode()),               # missing event_id
        (b"e", json.dumps(survey("v5", 14, score="nine")).encode()),     # wrong type
        (b"f", b'{"event_id": "v6", '),                                   # broken JSON
        (b"g", b"hello world"),                                          # not an event at all
        (b"h", None),                                                     # tombstone
        (b"i", CODEC.encode(SURVEY, survey("v7", 60 * 24 * 3650))),       # ten years ahead
    ], partition=1)
    sent_web = produce(kafka, web_topic, [(b"s1", CODEC.encode(WEB, web("w1", 30)))],
                       partition=2)
    warehouse = tmp_path / "w.duckdb"

    summary = run_once(topics, warehouse)

    assert summary["reconciled"] is True
    assert summary["topics"][social] == {
        "read": 7, "accepted": 4, "duplicates": 1, "unique": 3, "dead_letters": 3,
        "dead_letters_by_reason": {"incompatible_schema": 1, "undecodable": 1,
                                   "unknown_schema_id": 1}, "reconciled": True}
    assert summary["topics"][survey_topic]["dead_letters_by_reason"] == {
        "empty_value": 1, "future_timestamp": 1, "invalid_json": 1, "invalid_value": 1,
        "missing_field": 1, "schema_violation": 1, "undecodable": 1}
    assert summary["topics"][survey_topic]["accepted"] == 2
    assert summary["topics"][web_topic]["accepted"] == 1

    con = duckdb.connect(str(warehouse), read_only=True)
    dead = {(r[0], r[1], r[2]): r[3:] for r in con.execute(
        'SELECT topic, "partition", "offset", "key", "value", stage, reason FROM dead_letters'
    ).fetchall()}
    expected = {}
    for (part, offset, key, value), reason, stage in zip(sent_social[4:], [
            "incompatible_schema", "unknown_schema_id", "undecodable"], ["decode"] * 3):
        expected[(social, part, offset)] = (key, value, stage, reason)
    for (part, offset, key, value), (stage, reason) in zip(sent_survey[2:], [
            ("validate", "invalid_value"), ("decode", "missing_field"),
            ("decode", "schema_violation"), ("decode", "invalid_json"),
            ("decode", "undecodable"), ("decode", "empty_value"),
            ("validate", "future_timestamp")]):
        expected[(survey_topic, part, offset)] = (key, value, stage, reason)
    assert dead == expected

    counts = con.execute(
        "SELECT window_seconds, window_start, event_kind, event_type, brand, channel, events "
        "FROM event_counts ORDER BY ALL").fetchall()
    con.close()
    from datetime import datetime
    h0, h1 = datetime(2026, 11, 23, 6), datetime(2026, 11, 23, 7)
    day = datetime(2026, 11, 23)
    assert counts == [
        (3600, h0, "social", "post", "Nordwind", "instagram", 1),
        (3600, h0, "social", "post", "Nordwind", "x", 1),
        (3600, h0, "survey", "NPS", "Nordwind", "email", 2),
        (3600, h0, "web", "page_view", "Kaffeeklatsch", "mobile", 1),
        (3600, h1, "social", "post", "Nordwind", "instagram", 1),
        (86400, day, "social", "post", "Nordwind", "instagram", 2),
        (86400, day, "social", "post", "Nordwind", "x", 1),
        (86400, day, "survey", "NPS", "Nordwind", "email", 2),
        (86400, day, "web", "page_view", "Kaffeeklatsch", "mobile", 1),
    ]

    # The dead-letter topic carries the same records, in the DeadLetter envelope.
    envelopes = consume_all(kafka, topics["dead_letter"], 10)
    assert len(envelopes) == 10
    schema = fastavro.parse_schema(json.load(open(FileSchemaRegistry().dirs[0] /
                                                  "dead_letter.v1.avsc")))
    decoded = {}
    for message in envelopes:
        assert message.value[:5] == b"\x00" + struct.pack(">I", 4)
        env = fastavro.schemaless_reader(io.BytesIO(message.value[5:]), schema)
        decoded[(env["topic"], env["partition"], env["offset"])] = (
            env["key"], env["value"], env["stage"], env["reason"])
        assert message.key.decode() == env["dead_letter_id"]
    assert decoded == expected
    assert CODEC.decode is not None and DEAD_LETTER  # envelope schema is registered


def test_rerun_is_identical_and_batches_sharing_windows_add_up(kafka, topics, tmp_path):
    social = topics["social"]
    produce(kafka, social, [(b"k", CODEC.encode(SOCIAL, post(f"a{i}", i))) for i in range(30)])
    warehouse = tmp_path / "w.duckdb"
    first = run_once(topics, warehouse)
    assert first["topics"][social]["accepted"] == 30
    before = dump(warehouse)

    # Same offsets again: nothing new (committed position), and a replay from the earliest
    # offset must not count anything twice either.
    assert run_once(topics, warehouse)["records_read"] == 0
    assert run_once(topics, warehouse, "--from", "earliest")["records_read"] == 0
    assert dump(warehouse) == before

    # A second batch with events in the same hour (minutes 30..44) and re-sent old ones.
    produce(kafka, social, [(b"k", CODEC.encode(SOCIAL, post(f"b{i}", 30 + i))) for i in range(15)]
            + [(b"k", CODEC.encode(SOCIAL, post("a3", 3)))])
    second = run_once(topics, warehouse)
    assert second["topics"][social] | {"dead_letters_by_reason": {}} == {
        "read": 16, "accepted": 16, "duplicates": 1, "unique": 15, "dead_letters": 0,
        "dead_letters_by_reason": {}, "reconciled": True}
    con = duckdb.connect(str(warehouse), read_only=True)
    assert con.execute("SELECT window_seconds, events FROM event_counts ORDER BY 1").fetchall() \
        == [(3600, 45), (86400, 45)]
    statuses = con.execute("SELECT status FROM _cx360_batches").fetchall()
    con.close()
    assert statuses == [("committed",), ("committed",)]


def test_registry_folder_with_a_newer_schema_version(kafka, topics, tmp_path):
    """Producers upgraded to SocialEvent v2 while older ones still send v1: both are read."""
    social = topics["social"]
    newer = AvroCodec(FileSchemaRegistry([DATA / "schemas_v2"]))
    produce(kafka, social, [
        (b"k", CODEC.encode(SOCIAL, post("old", 1))),
        (b"k", newer.encode(SOCIAL, dict(post("new", 2), campaign_id="c", is_sponsored=True))),
    ])
    warehouse = tmp_path / "w.duckdb"
    # Without the v2 schema, id 101 is unknown: a dead letter, kept for replay, not lost.
    summary = run_once(topics, warehouse)
    assert summary["topics"][social]["dead_letters_by_reason"] == {"unknown_schema_id": 1}
    other = tmp_path / "w2.duckdb"
    summary = run_once(topics, other, "--schema-registry", str(DATA / "schemas_v2"))
    assert summary["topics"][social]["accepted"] == 2


def test_replay_from_a_timestamp_then_backfill_the_rest(kafka, topics, tmp_path):
    """--from TIME starts at the first record stamped at or after it; a later --from earliest
    backfills only what is missing, so every event is counted exactly once."""
    social = topics["social"]
    t0 = H + 10 * HOUR  # Kafka timestamps, one second apart
    # Separate produce calls, so the records sit in several broker batches.
    for chunk in range(4):
        ids = range(chunk * 5, chunk * 5 + 5)
        produce(kafka, social, [(b"k", CODEC.encode(SOCIAL, post(f"t{i}", i))) for i in ids],
                partition=1, timestamps_ms=[t0 + i * 1000 for i in ids])
    warehouse = tmp_path / "w.duckdb"
    from datetime import datetime, timezone
    iso = datetime.fromtimestamp((t0 + 7_000) / 1000, timezone.utc).isoformat()
    first = run_once(topics, warehouse, "--from", f"{social}={iso}")
    assert first["topics"][social]["read"] == 13           # offsets 7..19
    con = duckdb.connect(str(warehouse), read_only=True)
    assert con.execute("SELECT min(event_id), count(*) FROM _cx360_event_ids").fetchall() == [
        ("t10", 13)]  # t7..t19 (min is lexicographic)
    con.close()
    second = run_once(topics, warehouse, "--from", "earliest")
    assert second["topics"][social]["read"] == 7            # only offsets 0..6
    con = duckdb.connect(str(warehouse), read_only=True)
    assert con.execute("SELECT sum(events) FROM event_counts WHERE window_seconds = 86400"
                       ).fetchall() == [(20,)]
    con.close()
