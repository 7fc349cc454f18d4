"""The generated stream: deterministic, with the configured disorder, decodable exactly as a
consumer decodes it, and with a truth that later evaluations (identity stitching, KPIs) rely on.

Decoding here is written independently of the generator: a value is read the way the
pipeline's decoder reads a Kafka record.
"""
import collections
import json
import statistics

import pytest

from cx360.pipelines.generator import (MALFORMED_REASONS, Brand, GeneratorConfig,
                                       generate)
from cx360.schemas.codec import AvroCodec, DecodeError, JsonEventReader
from cx360.schemas.registry import SOCIAL, SURVEY, WEB, FileSchemaRegistry
from cx360.transforms.validate import validate_event

HOUR = 3_600_000
START = 1_793_577_600_000  # 2026-11-02T00:00:00Z
SUBJECTS = {"social": SOCIAL, "web": WEB, "survey": SURVEY}
CODEC = AvroCodec(FileSchemaRegistry())
JSON_READER = JsonEventReader(CODEC)


def consume(role: str, value, now_ms: int) -> dict:
    """What a consumer does with a value: the event, or DecodeError with the reason."""
    if value is None or len(value) == 0:
        raise DecodeError("empty_value", "no value")
    if value[0] == 0:
        event, _ = CODEC.decode(value, SUBJECTS[role])
    elif value[:1] == b"{":
        event, _ = JSON_READER.read(value, SUBJECTS[role])
    else:
        raise DecodeError("undecodable", "neither wire format nor JSON")
    validate_event(role, event, now_ms)
    return event


CONFIG = GeneratorConfig(seed=11, events=5000, start_ms=START, duration_s=48 * 3600)
NOW = START + 48 * HOUR  # the end of the period: nothing valid is in the future


@pytest.fixture(scope="module")
def records():
    return list(generate(CONFIG))


@pytest.fixture(scope="module")
def valid(records):
    return [r for r in records if r.truth["kind"] == "valid"]


def test_same_seed_gives_identical_bytes_and_another_seed_does_not():
    config = GeneratorConfig(seed=5, events=1500, start_ms=START)
    first = [(r.role, r.key, r.value, r.truth) for r in generate(config)]
    again = [(r.role, r.key, r.value, r.truth) for r in generate(config)]
    assert first == again
    other = [(r.role, r.key, r.value) for r in generate(GeneratorConfig(seed=6, events=1500,
                                                                       start_ms=START))]
    assert len(other) == 1500
    assert sum(a[:3] == b for a, b in zip(first, other)) == 0


def test_exact_record_count_and_fractions(records, valid):
    kinds = collections.Counter(r.truth["kind"] for r in records)
    # 5000 records: 1% malformed = 50, 1% duplicates = 50, the rest valid.
    assert kinds == {"valid": 4900, "malformed": 50, "duplicate": 50}
    # 2% of 4900 valid events late (98) and 2% JSON-encoded (98), up to sampling noise
    # (binomial standard deviation ~9.8; allow 4 of them).
    late = sum(r.truth["late"] for r in valid)
    as_json = sum(r.value[:1] == b"{" for r in valid)
    assert 59 <= late <= 137
    assert 59 <= as_json <= 137


def test_larger_fractions_are_respected():
    config = GeneratorConfig(seed=3, events=4000, start_ms=START, malformed=0.05,
                             duplicates=0.03, late=0.1, json=0.25)
    records = list(generate(config))
    kinds = collections.Counter(r.truth["kind"] for r in records)
    assert kinds == {"valid": 3680, "malformed": 200, "duplicate": 120}
    valid = [r for r in records if r.truth["kind"] == "valid"]
    late = sum(r.truth["late"] for r in valid)            # expect 368, sd ~18
    as_json = sum(r.value[:1] == b"{" for r in valid)     # expect 920, sd ~26
    assert 296 <= late <= 440
    assert 816 <= as_json <= 1024


def test_every_malformed_record_fails_with_its_expected_reason(records):
    malformed = [r for r in records if r.truth["kind"] == "malformed"]
    seen = collections.Counter()
    for record in malformed:
        with pytest.raises(DecodeError) as err:
            consume(record.role, record.value, NOW)
        assert err.value.reason == record.truth["expected_reason"], record.truth
        assert record.event is None
        seen[err.value.reason] += 1
    # 50 malformed records cycle through the 9 reasons: each 5 or 6 times.
    assert set(seen) == set(MALFORMED_REASONS)
    assert min(seen.values()) >= 5


def test_future_timestamps_are_days_ahead_of_now():
    config = GeneratorConfig(seed=2, events=900, start_ms=START, malformed=0.1,
                             now_ms=START + 100 * HOUR)
    future = [r for r in generate(config) if r.truth.get("expected_reason") == "future_timestamp"]
    assert len(future) == 10  # 90 malformed records, 9 reasons
    for record in future:
        assert record.truth["event_time"] >= START + 100 * HOUR + 24 * HOUR


def test_every_valid_record_decodes_to_its_event_and_validates(valid):
    for record in valid:
        event = consume(record.role, record.value, NOW)
        event.pop("_extra", None)
        assert event == record.event
        assert record.truth["event_id"] == event["event_id"]


def test_avro_values_are_exactly_what_the_codec_writes(valid):
    avro = [r for r in valid if r.value[0] == 0]
    assert len(avro) > 4000
    for record in avro:
        assert record.value == CODEC.encode(SUBJECTS[record.role], record.event)


def test_duplicates_resend_a_recent_record_byte_for_byte(records):
    duplicates = [i for i, r in enumerate(records) if r.truth["kind"] == "duplicate"]
    assert len(duplicates) == 50
    for i in duplicates:
        dup = records[i]
        earlier = [j for j in range(max(0, i - 40), i)
                   if records[j].truth["kind"] == "valid"
                   and (records[j].role, records[j].key, records[j].value)
                   == (dup.role, dup.key, dup.value)]
        assert earlier, f"duplicate at {i} has no original among the 40 records before it"
        assert dup.truth["event_id"] == records[earlier[-1]].truth["event_id"]
        assert dup.truth["duplicate_of"] == earlier[-1] or dup.truth["duplicate_of"] in earlier


def test_late_records_arrive_after_much_newer_events(records, valid):
    late_positions = [i for i, r in enumerate(records) if r.truth["kind"] == "valid"
                      and r.truth["late"]]
    assert late_positions
    newest_before = []
    newest = 0
    for record in records:
        newest_before.append(newest)
        if record.event is not None:
            newest = max(newest, record.event["event_time"])
    behind = []
    for i in late_positions:
        record = records[i]
        # Something that happened later arrived before it ...
        assert newest_before[i] > record.event["event_time"]
        behind.append(newest_before[i] - record.event["event_time"])
        # ... as it arrives 1 to 6 hours after it happened.
        delay = record.truth["arrival_ms"] - record.event["event_time"]
        assert HOUR <= delay <= 6 * HOUR
    # Usually by far more than the out-of-order jitter (quiet night hours aside).
    assert sum(b > 30 * 60_000 for b in behind) / len(behind) > 0.9
    assert statistics.median(behind) > HOUR
    # On-time events are out of order only by the arrival jitter (mean 20 s).
    on_time = [r.truth["arrival_ms"] - r.event["event_time"] for r in valid
               if not r.truth["late"]]
    assert statistics.median(on_time) < 30_000
    arrivals = [r.truth["arrival_ms"] for r in records]
    assert arrivals == sorted(arrivals)


def test_event_times_cover_the_period_with_a_daily_rhythm(valid):
    times = [r.event["event_time"] for r in valid]
    assert START <= min(times) < START + HOUR
    assert START + 47 * HOUR < max(times) <= START + 48 * HOUR
    by_hour = collections.Counter((t - START) // HOUR % 24 for t in times)  # UTC hours
    # Evening (18-21 UTC) is busier than the small hours (1-4 UTC).
    assert sum(by_hour[h] for h in range(18, 22)) > 5 * sum(by_hour[h] for h in range(1, 5))


def test_truth_covers_every_record(records):
    assert [r.truth["seq"] for r in records] == list(range(5000))
    for record in records:
        truth = record.truth
        assert truth["role"] == record.role
        assert truth["kind"] in ("valid", "duplicate", "malformed")
        if truth["kind"] == "malformed":
            assert truth["expected_reason"] in MALFORMED_REASONS
        else:
            assert truth["event_id"] == record.event["event_id"]
            assert truth["event_time"] == record.event["event_time"]
            assert truth["expected_reason"] is None


def test_kafka_keys(valid):
    items = {r.event["post_id"]: r.event for r in valid if r.role == "social"}

    def root(event):
        while event["event_type"] not in ("post", "mention"):
            event = items[event["parent_post_id"]]
        return event["post_id"]

    for record in valid:
        event = record.event
        if record.role == "social":
            assert record.key == root(event).encode()   # a thread stays on one partition
        elif record.role == "web":
            assert record.key == event["session_id"].encode()
        else:
            assert record.key == (event["account_id"] or event["email"]).encode()


def test_customers_use_several_channels_with_linkable_identifiers(valid):
    channels = collections.defaultdict(set)
    owners = collections.defaultdict(set)   # identifier -> true customers
    for record in valid:
        customer, event = record.truth["customer_id"], record.event
        if customer is None:
            continue
        channels[customer].add(record.role)
        for field in ("account_id", "email", "cookie_id"):
            if event.get(field):
                value = event[field].lower() if field == "email" else event[field]
                owners[(field, value)].add(customer)
        if record.role == "social" and not event["author_is_brand"]:
            owners[("handle", event["platform"], event["author_handle"])].add(customer)
        if event.get("social_handle"):
            owners[("handle", event["social_platform"], event["social_handle"])].add(customer)
    assert len(channels) > 100
    multi = sum(len(c) >= 2 for c in channels.values()) / len(channels)
    assert multi >= 0.6
    # Accounts, e-mails (case aside) and handles each belong to one customer ...
    for key, customers in owners.items():
        if key[0] != "cookie_id":
            assert len(customers) == 1, key
    # ... while a few devices are shared by two customers.
    shared = [k for k, c in owners.items() if k[0] == "cookie_id" and len(c) > 1]
    assert 1 <= len(shared) <= 20
    # Every linking event type is there: logins, orders with e-mail, account links.
    types = collections.Counter(r.event.get("event_type") for r in valid if r.role == "web")
    assert types["login"] > 0 and types["order"] > 0 and types["account_link"] > 0


def test_brand_replies_follow_what_they_answer(valid):
    social = {r.event["post_id"]: r for r in valid if r.role == "social"}
    replies = [r for r in valid if r.role == "social" and r.event["event_type"] == "reply"]
    assert len(replies) > 100
    delays = []
    for reply in replies:
        parent = social[reply.event["parent_post_id"]]  # a post, or a comment on a brand post
        assert parent.event["event_type"] in ("post", "mention", "comment")
        assert reply.event["author_is_brand"] is True
        assert parent.event["aimed_at_brand"] is True
        assert reply.event["brand"] == parent.event["brand"]
        assert reply.key == parent.key
        assert reply.event["event_time"] > parent.event["event_time"]
        delays.append((reply.event["event_time"] - parent.event["event_time"]) / 60_000)
    assert 30 <= statistics.median(delays) <= 65             # median ~45 minutes
    assert 0.2 <= sum(d > 60 for d in delays) / len(delays) <= 0.55
    aimed = [r for r in social.values() if r.event["aimed_at_brand"]]
    answered = {r.event["parent_post_id"] for r in replies}
    assert 0.6 <= len(answered) / len(aimed) <= 0.9          # ~20-25% never answered
    # Likes, comments and shares point at an original post of the same thread.
    for record in social.values():
        if record.event["event_type"] in ("like", "comment", "share"):
            parent = social[record.event["parent_post_id"]]
            assert parent.event["event_type"] in ("post", "mention")
            assert parent.key == record.key
    # Brands post their own content too (engagement rates are computed on it).
    own = [r for r in social.values() if r.event["author_is_brand"]
           and r.event["event_type"] == "post"]
    assert own and all(r.event["reach"] > 0 for r in own)


def test_content_looks_like_the_real_thing(valid):
    social = [r.event for r in valid if r.role == "social"]
    texts = [e["text"] for e in social if e["event_type"] in ("post", "mention")]
    langs = collections.Counter(e["lang"] for e in social if e["event_type"] == "post")
    assert langs["de"] > 0 and langs["en"] > 0
    emoji = sum(any(ord(ch) > 0x2600 for ch in t) for t in texts)
    assert emoji / len(texts) > 0.9
    mostly_emoji = sum(sum(ord(ch) > 0x2600 for ch in t) * 2 >= len(t.split()) + 1
                       for t in texts)
    assert mostly_emoji / len(texts) > 0.1
    mentioned = collections.Counter(b for e in social for b in e["mentioned_brands"])
    assert {"Telvana", "Kaffino", "Veluna", "Funkrix", "Bohnaro", "Dermalia"} <= set(mentioned)
    assert any(len(e["mentioned_brands"]) == 2 for e in social)
    assert all(e["reach"] is None or e["reach"] >= 0 for e in social)
    web = [r.event for r in valid if r.role == "web"]
    starts = [e for e in web if e["event_type"] == "session_start"]
    social_referred = [e for e in starts if e["utm_medium"] in ("social", "paid_social")]
    assert 0.1 <= len(social_referred) / len(starts) <= 0.3
    orders = [e for e in web if e["event_type"] == "order"]
    assert orders and all(e["currency"] == "EUR" and e["order_value"] > 0 and e["email"]
                          and e["order_id"] for e in orders)
    surveys = [r.event for r in valid if r.role == "survey"]
    assert {s["survey_type"] for s in surveys} == {"NPS", "CSAT", "CES"}
    assert any(s["phone"] for s in surveys)
    assert sum(bool(s["comment"]) for s in surveys) / len(surveys) > 0.4


def test_custom_brands():
    config = GeneratorConfig(seed=1, events=600, start_ms=START,
                             brands=(Brand("Rolli Räder", "bikes", ("Speichenwerk",)),))
    records = list(generate(config))
    brands = {r.event.get("brand") for r in records if r.event is not None}
    assert brands <= {"Rolli Räder", "Speichenwerk", None}
    web = [r for r in records if r.role == "web" and r.event is not None]
    assert web and all(r.event["brand"] == "Rolli Räder" for r in web)


@pytest.mark.parametrize("field,value", [("malformed", 1.5), ("late", -0.1), ("json", 2.0),
                                         ("duplicates", -1.0)])
def test_fractions_outside_zero_to_one_are_refused(field, value):
    with pytest.raises(ValueError):
        GeneratorConfig(**{field: value})


def test_tiny_streams():
    assert list(generate(GeneratorConfig(events=0))) == []
    one = list(generate(GeneratorConfig(events=1)))
    assert len(one) == 1 and one[0].truth["kind"] == "valid"
    all_bad = list(generate(GeneratorConfig(events=20, malformed=1.0, duplicates=0.0)))
    assert [r.truth["kind"] for r in all_bad] == ["malformed"] * 20


def test_truth_is_json_serialisable(records):
    for record in records[:500]:
        json.dumps(record.truth)
