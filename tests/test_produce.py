"""Feeding data in, through a real broker: `cx360 produce` of a user's JSONL file, and the
generator's records produced and read back."""
import collections
import io
import json
import time

from cx360.pipelines.generate_cmd import produce_generated
from cx360.pipelines.generator import GeneratorConfig, generate
from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import SOCIAL, SURVEY, WEB, FileSchemaRegistry
from conftest import cli
from kafka_helpers import consume_all

CODEC = AvroCodec(FileSchemaRegistry())
MINUTE = 60_000


def topic_args(kafka, topics):
    return ["--bootstrap-servers", kafka.bootstrap_servers,
            "--social-topic", topics["social"], "--web-topic", topics["web"],
            "--survey-topic", topics["survey"], "--dead-letter-topic", topics["dead_letter"]]


def social_defaults(**fields):
    """A SocialEvent as the decoder returns it: every field, defaults filled in."""
    record = {"event_id": None, "event_type": None, "event_time": None, "platform": None,
              "brand": None, "author_handle": None, "author_is_brand": False, "post_id": None,
              "parent_post_id": None, "aimed_at_brand": False, "text": None, "lang": None,
              "reach": None, "followers": None, "mentioned_brands": [], "hashtags": [],
              "url": None}
    record.update(fields)
    return record


def test_produce_sends_valid_lines_avro_encoded_and_reports_the_rest(kafka, topics, tmp_path):
    now = int(time.time() * 1000)
    post = {"event_id": "u-1", "event_type": "post", "event_time": now - 90 * MINUTE,
            "platform": "instagram", "brand": "Kaffino", "author_handle": "@anna_k",
            "post_id": "ig-1", "aimed_at_brand": True, "text": "Wo bleibt mein Paket?? 😡📦",
            "lang": "de", "reach": 310, "followers": 1200, "mentioned_brands": ["Kaffino"]}
    reply = {"event_id": "u-2", "event_type": "reply", "event_time": "2026-01-05T10:15:00.250Z",
             "platform": "instagram", "brand": "Kaffino", "author_handle": "@kaffino",
             "author_is_brand": True, "post_id": "ig-2", "parent_post_id": "ig-1",
             "text": "Das tut uns leid! Schreib uns per DM 🙏"}
    like = {"event_id": "u-3", "event_type": "like", "event_time": now - 80 * MINUTE,
            "platform": "instagram", "brand": "Kaffino", "author_handle": "@ben",
            "post_id": "ig-3", "parent_post_id": "ig-1"}
    lines = [
        json.dumps(post, ensure_ascii=False),                        # 1 valid
        json.dumps(reply, ensure_ascii=False),                       # 2 valid (ISO time)
        "",                                                          # 3 blank: skipped
        '{"event_id": "u-4", "event_type": "post", ',                # 4 invalid_json
        json.dumps(dict(post, event_id="u-5", followers="many")),    # 5 schema_violation
        json.dumps({k: v for k, v in post.items() if k != "post_id"} | {"event_id": "u-6"}),
        json.dumps(dict(post, event_id="u-7", event_type="retweet")),  # 7 invalid_value
        json.dumps(dict(post, event_id="u-8", event_time=now + 3 * 86_400_000)),  # 8 future
        json.dumps(like),                                            # 9 valid
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = cli("produce", "--topic", topics["social"], "--file", str(path),
                 *topic_args(kafka, topics))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [e.split(":")[:2] for e in errors] == [
        ["line 4", " invalid_json"], ["line 5", " schema_violation"],
        ["line 6", " missing_field"], ["line 7", " invalid_value"],
        ["line 8", " future_timestamp"]]
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == (
        f"produced 3, rejected 5 (future_timestamp 1, invalid_json 1, invalid_value 1, "
        f"missing_field 1, schema_violation 1) -> {topics['social']}")

    received = consume_all(kafka, topics["social"], expected=3)
    assert len(received) == 3
    decoded = {}
    for message in received:
        assert message.value[0] == 0  # Avro in Confluent wire format, schema id 1
        assert message.value[1:5] == b"\x00\x00\x00\x01"
        record, schema_id = CODEC.decode(message.value, SOCIAL)
        assert message.key == record["event_id"].encode()
        decoded[record["event_id"]] = record
    # 2026-01-05T10:15:00.250Z = 1767608100250 ms.
    assert decoded == {
        "u-1": social_defaults(**post),
        "u-2": social_defaults(**dict(reply, event_time=1_767_608_100_250)),
        "u-3": social_defaults(**like),
    }
    # Nothing else arrived: the rejected lines were not produced.
    assert len(consume_all(kafka, topics["social"], expected=4, timeout_s=1.5)) == 3


def test_produce_all_valid_exits_zero_with_key_field_and_kind(kafka, topics, tmp_path):
    now = int(time.time() * 1000)
    surveys = [{"event_id": f"n-{i}", "event_time": now - i * MINUTE, "brand": "Veluna",
                "survey_id": "veluna-nps-purchase", "survey_type": "NPS", "score": score,
                "email": f"kunde{i}@example.com", "comment": "Alles super 👍"}
               for i, score in enumerate((10, 9, 3))]
    path = tmp_path / "surveys.jsonl"
    path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in surveys))
    # The topic is not one of the configured ones, so --kind says what it holds.
    result = cli("produce", "--topic", topics["survey"], "--kind", "survey", "--file",
                 str(path), "--key-field", "email", "--bootstrap-servers",
                 kafka.bootstrap_servers)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("produced 3, rejected 0")
    received = consume_all(kafka, topics["survey"], expected=3)
    got = {m.key: CODEC.decode(m.value, SURVEY)[0] for m in received}
    assert sorted(got) == [b"kunde0@example.com", b"kunde1@example.com", b"kunde2@example.com"]
    assert [got[b"kunde%d@example.com" % i]["score"] for i in range(3)] == [10, 9, 3]


def test_produce_usage_errors_exit_two_without_traceback(kafka, topics, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("{}\n")
    unknown_kind = cli("produce", "--topic", "somewhere", "--file", str(path),
                       "--bootstrap-servers", kafka.bootstrap_servers)
    assert unknown_kind.returncode == 2
    assert "--kind" in unknown_kind.stderr and "Traceback" not in unknown_kind.stderr
    unreachable = cli("produce", "--topic", "cx.social", "--file", str(path),
                      "--bootstrap-servers", "127.0.0.1:1")
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip().startswith("cx360 produce: error: cannot reach Kafka")
    # --dry-run validates without a broker.
    dry = cli("produce", "--topic", "cx.social", "--file", str(path), "--dry-run",
              "--bootstrap-servers", "127.0.0.1:1")
    assert dry.returncode == 1
    assert "line 1: missing_field: required field 'event_id' is missing" in dry.stderr
    assert "valid 0, rejected 1 (missing_field 1)" in dry.stdout


def test_produce_generated_round_trip(kafka, topics):
    records = list(generate(GeneratorConfig(seed=7, events=1500)))
    truth_out = io.StringIO()
    counts = produce_generated(kafka, topics, records, truth_out=truth_out)
    assert counts["total"] == counts["sent"] == 1500
    assert counts["errors"] == 0
    # 1% of 1500 malformed and 1% duplicates: 15 each.
    assert (counts["valid"], counts["malformed"], counts["duplicates"]) == (1470, 15, 15)
    expected = collections.Counter(topics[r.role] for r in records)
    assert counts["by_topic"] == dict(expected)

    by_location = {}
    for role, subject in (("social", SOCIAL), ("web", WEB), ("survey", SURVEY)):
        topic = topics[role]
        received = consume_all(kafka, topic, expected=expected[topic])
        assert len(received) == expected[topic]
        sent = collections.Counter((r.key, r.value) for r in records if r.role == role)
        assert collections.Counter((m.key, m.value) for m in received) == sent
        for m in received:
            by_location[(m.topic, m.partition, m.offset)] = m

    # The truth file says where each record landed, in send order.
    truths = [json.loads(line) for line in truth_out.getvalue().splitlines()]
    assert [t["seq"] for t in truths] == list(range(1500))
    for truth, record in zip(truths, records):
        message = by_location[(truth["topic"], truth["partition"], truth["offset"])]
        assert (message.key, message.value) == (record.key, record.value)


def test_generate_command(kafka, topics, tmp_path):
    truth = tmp_path / "truth.jsonl"
    result = cli("generate", "--events", "400", "--seed", "3", "--start",
                 "2026-11-01T00:00:00Z", "--duration", "6h", "--truth-file", str(truth),
                 *topic_args(kafka, topics))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"generated 400 records to {kafka.bootstrap_servers}")
    assert "period 2026-11-01T00:00:00Z .. 2026-11-01T06:00:00Z, seed 3" in result.stdout
    assert "malformed 4" in result.stdout and "duplicates 4" in result.stdout
    lines = [json.loads(line) for line in truth.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 400 and all("offset" in t for t in lines)
    per_topic = collections.Counter(t["topic"] for t in lines)
    for role in ("social", "web", "survey"):
        assert len(consume_all(kafka, topics[role], per_topic[topics[role]])) \
            == per_topic[topics[role]]


def test_generate_rejects_bad_options_in_one_line(kafka, topics):
    bad_fraction = cli("generate", "--events", "10", "--malformed", "1.5", "--truth-file", "-",
                       *topic_args(kafka, topics))
    assert bad_fraction.returncode == 2
    assert bad_fraction.stderr.strip() == (
        "cx360 generate: error: --malformed must be a fraction between 0 and 1, got 1.5")
    unreachable = cli("generate", "--events", "10", "--truth-file", "-",
                      "--bootstrap-servers", "127.0.0.1:1")
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip().startswith("cx360 generate: error: cannot reach Kafka")
    missing = cli("generate", "--events", "10", "--truth-file", "-",
                  *topic_args(kafka, dict(topics, social="no-such-topic")))
    assert missing.returncode == 2
    assert "no-such-topic" in missing.stderr and "Traceback" not in missing.stderr
