"""Every KPI in the warehouse views equals a brute-force recomputation from the raw generated
events, with windows that span several micro-batches."""
import collections
import json
import math
import time
from datetime import datetime, timezone

import duckdb
import pytest

from cx360.pipelines.generator import GeneratorConfig, generate
from cx360.transforms.kpis import load_brands
from cx360.transforms.sentiment import SentimentScorer
from conftest import cli
from kafka_helpers import produce

HOUR = 3600
DAY = 86400
SOCIAL_HOSTS = ("instagram.com", "facebook.com", "x.com", "t.co", "twitter.com", "tiktok.com",
                "youtube.com", "linkedin.com", "pinterest.com")


def win(ms, size):
    start = ms // 1000 // size * size
    return datetime.fromtimestamp(start, timezone.utc).replace(tzinfo=None)


def quantile(values, q):
    """Linear interpolation between closest ranks (what quantile_cont computes)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@pytest.fixture(scope="module")
def pipeline_run(broker, tmp_path_factory):
    """Generate ~4k events, produce them in two waves and run the pipeline in many small
    micro-batches; returns (warehouse path, unique valid events)."""
    from cx360.pipelines.topics_cmd import create_topics
    from cx360.transforms.kafka_io import KafkaConfig

    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
    topics = {r: f"kpi.{r}" for r in ("social", "web", "survey", "dead_letter")}
    create_topics(kafka, topics, partitions=3)
    now = int(time.time() * 1000)
    start = (now - 10 * 3_600_000) // 3_600_000 * 3_600_000
    config = GeneratorConfig(seed=5, events=4000, start_ms=start, duration_s=8 * HOUR,
                             malformed=0.02, duplicates=0.02, late=0.05, now_ms=now)
    records = list(generate(config))
    warehouse = tmp_path_factory.mktemp("kpi") / "w.duckdb"
    args = ["run", "--once", "--json", "--max-batch-records", "250",
            "--warehouse", f"duckdb:{warehouse}", "--bootstrap-servers", broker.bootstrap]
    for role in topics:
        args += [f"--{role.replace('_', '-')}-topic", topics[role]]
    half = len(records) // 2
    batches = 0
    for wave in (records[:half], records[half:]):
        for role in ("social", "web", "survey"):
            produce(kafka, topics[role], [(r.key, r.value) for r in wave if r.role == role])
        while True:
            done = cli(*args)
            assert done.returncode == 0, done.stderr
            summary = json.loads(done.stdout.splitlines()[-1])
            assert summary["reconciled"]
            if not summary["records_read"]:
                break
            batches += len(summary["batches"])
    assert batches >= 4  # windows really span micro-batches
    unique = {}
    for record in records:
        if record.event is not None:
            unique.setdefault(record.event["event_id"], (record.role, record.event))
    return warehouse, list(unique.values())


@pytest.fixture(scope="module")
def con(pipeline_run):
    connection = duckdb.connect(str(pipeline_run[0]), read_only=True)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def events(pipeline_run):
    return pipeline_run[1]


@pytest.fixture(scope="module")
def scorer():
    return SentimentScorer()


def rows(con, sql):
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def test_event_counts_and_nothing_lost(con, events):
    expected = collections.Counter()
    for role, e in events:
        expected[(role, win(e["event_time"], HOUR))] += 1
    got = {(r["event_kind"], r["window_start"]): r["n"] for r in rows(con, """
        SELECT event_kind, window_start, sum(events) AS n FROM event_counts
        WHERE window_seconds = 3600 GROUP BY ALL""")}
    assert got == dict(expected)


def test_social_listening_per_brand(con, events, scorer):
    expected = collections.defaultdict(lambda: collections.Counter())
    polarity = collections.defaultdict(float)
    for role, e in events:
        if role != "social":
            continue
        key = (win(e["event_time"], DAY), e.get("brand") or "(none)")
        c = expected[key]
        voice = e["event_type"] in ("post", "comment", "mention") and not e["author_is_brand"]
        if voice:
            c["mentions"] += 1
            c["ugc_posts"] += e["event_type"] == "post"
            c["inbound"] += bool(e["aimed_at_brand"])
            if e.get("text"):
                s = scorer.score(e["text"], e.get("lang"))
                c["scored"] += 1
                c[s["label"]] += 1
                polarity[key] += s["polarity"]
            c["comments"] += e["event_type"] == "comment"
        elif e["event_type"] == "post":
            c["brand_posts"] += 1
            c["reach"] += e.get("reach") or 0
        c["likes"] += e["event_type"] == "like"
        c["shares"] += e["event_type"] == "share"
        c["replies"] += e["event_type"] == "reply"
    got = {(r["window_start"], r["brand"]): r for r in rows(
        con, "SELECT * FROM kpi_social_brand WHERE window_seconds = 86400")}
    assert set(got) == set(expected)
    for key, c in expected.items():
        r = got[key]
        assert (r["mentions"], r["ugc_posts"], r["inbound"], r["scored"], r["positive"],
                r["negative"], r["brand_posts"], r["brand_post_reach"], r["likes"], r["shares"],
                r["comments"], r["brand_replies"]) == (
            c["mentions"], c["ugc_posts"], c["inbound"], c["scored"], c["positive"],
            c["negative"], c["brand_posts"], c["reach"], c["likes"], c["shares"],
            c["comments"], c["replies"]), key
        if c["scored"]:
            assert r["sentiment_mean"] == pytest.approx(polarity[key] / c["scored"])
        interactions = c["likes"] + c["shares"] + c["comments"]
        if c["reach"]:
            assert r["engagement_rate_pct"] == pytest.approx(100 * interactions / c["reach"])
        else:
            assert r["engagement_rate_pct"] is None


def test_share_of_voice(con, events):
    industry = {b["brand"]: b["industry"] for b in load_brands()}
    mentions = collections.Counter()
    for role, e in events:
        if role == "social" and e["event_type"] in ("post", "comment", "mention") \
                and not e["author_is_brand"]:
            named = set(e.get("mentioned_brands") or ())
            if e.get("brand"):
                named.add(e["brand"])
            for brand in named:
                mentions[(win(e["event_time"], DAY), brand)] += 1
    totals = collections.Counter()
    for (day, brand), n in mentions.items():
        totals[(day, industry.get(brand, "(none)"))] += n
    got = {(r["window_start"], r["brand"]): r for r in rows(
        con, "SELECT * FROM kpi_share_of_voice WHERE window_seconds = 86400")}
    assert {k: r["mentions"] for k, r in got.items()} == dict(mentions)
    for (day, brand), n in mentions.items():
        assert got[(day, brand)]["share_of_voice_pct"] == pytest.approx(
            100 * n / totals[(day, industry.get(brand, "(none)"))])
    assert {r["industry"] for r in got.values()} >= {"telco", "coffee", "cosmetics"}


def test_brand_response_time_and_rate(con, events, scorer):
    inbound, first_reply = {}, {}
    for role, e in events:
        if role != "social":
            continue
        if e["event_type"] in ("post", "comment", "mention") and not e["author_is_brand"] \
                and e["aimed_at_brand"] and e.get("brand"):
            label = scorer.score(e["text"], e.get("lang"))["label"] if e.get("text") else "neutral"
            inbound.setdefault((e["platform"], e["post_id"]), (e, label))
        if e["event_type"] == "reply" and e.get("parent_post_id"):
            key = (e["platform"], e["parent_post_id"])
            first_reply[key] = min(first_reply.get(key, e["event_time"]), e["event_time"])
    groups = collections.defaultdict(list)
    for key, (e, label) in inbound.items():
        reply = first_reply.get(key)
        minutes = None if reply is None else max(reply - e["event_time"], 0) / 60000
        groups[(win(e["event_time"], DAY), e["brand"])].append((minutes, label))
    got = {(r["window_start"], r["brand"]): r for r in rows(con, """
        SELECT window_start, brand, count(*) AS inbound, count(first_reply_time) AS replied,
               quantile_cont(response_minutes, 0.5) AS median,
               quantile_cont(response_minutes, 0.9) AS p90,
               count(*) FILTER (WHERE response_minutes <= 60) AS within_1h,
               count(*) FILTER (WHERE label = 'negative' AND first_reply_time IS NULL) AS open
        FROM (SELECT *, time_bucket(INTERVAL 1 DAY, inbound_time, TIMESTAMP '1970-01-01')
                        AS window_start FROM brand_response_facts)
        GROUP BY window_start, brand""")}
    assert set(got) == set(groups)
    answered_somewhere = 0
    for key, items in groups.items():
        times = [m for m, _ in items if m is not None]
        r = got[key]
        assert r["inbound"] == len(items) and r["replied"] == len(times)
        assert r["within_1h"] == sum(m <= 60 for m in times)
        assert r["open"] == sum(m is None and label == "negative" for m, label in items)
        if times:
            answered_somewhere += 1
            assert r["median"] == pytest.approx(quantile(times, 0.5))
            assert r["p90"] == pytest.approx(quantile(times, 0.9))
    assert answered_somewhere
    # The per-platform view sums to the same inbound counts.
    by_view = rows(con, "SELECT sum(inbound) AS n, sum(replied) AS r FROM kpi_response "
                        "WHERE window_seconds = 86400")[0]
    assert by_view["n"] == len(inbound)
    assert by_view["r"] == sum(1 for k in inbound if k in first_reply)


def test_web_sessions_conversion_bounce_revenue(con, events):
    visits = collections.defaultdict(list)
    for role, e in events:
        if role == "web":
            visits[(e["brand"], e["cookie_id"])].append(e)
    expected = collections.defaultdict(collections.Counter)
    revenue = collections.defaultdict(float)
    for (brand, _), evs in visits.items():
        evs.sort(key=lambda e: (e["event_time"], e["event_id"]))
        sessions, current = [], [evs[0]]
        for prev, e in zip(evs, evs[1:]):
            if e["event_time"] - prev["event_time"] > 30 * 60_000:
                sessions.append(current)
                current = []
            current.append(e)
        sessions.append(current)
        for s in sessions:
            first = s[0]
            types = [e["event_type"] for e in s]
            converted = "order" in types
            views = sum(t in ("page_view", "product_view") for t in types)
            bounced = views <= 1 and "add_to_cart" not in types and not converted
            social = first.get("utm_medium") in ("social", "paid_social") or any(
                (first.get("referrer") or "") == h or (first.get("referrer") or "").endswith("." + h)
                for h in SOCIAL_HOSTS)
            key = (win(first["event_time"], DAY), brand)
            c = expected[key]
            c["sessions"] += 1
            c["converted"] += converted
            c["bounced"] += bounced
            c["orders"] += len({e["order_id"] for e in s if e.get("order_id")})
            c["social"] += social
            c["social_conv"] += social and converted
            revenue[key] += sum(e.get("order_value") or 0 for e in s)
    got = {(r["window_start"], r["brand"]): r for r in rows(con, """
        SELECT window_start, brand, sum(sessions) AS sessions,
               sum(converted_sessions) AS converted, sum(bounced_sessions) AS bounced,
               sum(orders) AS orders, sum(revenue) AS revenue,
               sum(social_referred_sessions) AS social,
               sum(social_referred_conversions) AS social_conv
        FROM kpi_web WHERE window_seconds = 86400 GROUP BY ALL""")}
    assert set(got) == set(expected)
    for key, c in expected.items():
        r = got[key]
        assert (r["sessions"], r["converted"], r["bounced"], r["orders"], r["social"],
                r["social_conv"]) == (c["sessions"], c["converted"], c["bounced"], c["orders"],
                                      c["social"], c["social_conv"]), key
        assert r["revenue"] == pytest.approx(revenue[key])
    assert sum(c["converted"] for c in expected.values()) > 0
    assert sum(c["social"] for c in expected.values()) > 0


def test_survey_nps_csat_ces(con, events):
    groups = collections.defaultdict(list)
    for role, e in events:
        if role == "survey":
            groups[(win(e["event_time"], DAY), e["brand"], e["survey_type"])].append(e["score"])
    got = {(r["window_start"], r["brand"], r["survey_type"]): r for r in rows(
        con, "SELECT * FROM kpi_survey WHERE window_seconds = 86400")}
    assert set(got) == set(groups)
    for (day, brand, kind), scores in groups.items():
        r = got[(day, brand, kind)]
        n = len(scores)
        assert r["responses"] == n
        if kind == "NPS":
            promoters = sum(s >= 9 for s in scores)
            detractors = sum(s <= 6 for s in scores)
            assert r["nps"] == pytest.approx(100 * (promoters - detractors) / n)
        elif kind == "CSAT":
            assert r["csat_top2_pct"] == pytest.approx(100 * sum(s >= 4 for s in scores) / n)
        else:
            assert r["ces_mean"] == pytest.approx(sum(scores) / n)
    assert {k[2] for k in groups} == {"NPS", "CSAT", "CES"}


def test_aspects(con, events, scorer):
    expected = collections.Counter()
    for role, e in events:
        if role == "social" and e["event_type"] in ("post", "comment", "mention") \
                and not e["author_is_brand"] and e.get("text"):
            s = scorer.score(e["text"], e.get("lang"))
            for aspect in s["aspects"]:
                expected[("social", e.get("brand") or "(none)", aspect, s["label"])] += 1
        elif role == "survey" and (e.get("comment") or "").strip():
            s = scorer.score(e["comment"], e.get("lang"))
            for aspect in s["aspects"]:
                expected[("survey", e["brand"], aspect, s["label"])] += 1
    got = {(r["source"], r["brand"], r["aspect"], r["label"]): r["n"] for r in rows(con, """
        SELECT source, brand, aspect, label, sum(mentions) AS n FROM aspect_mentions
        WHERE window_seconds = 86400 GROUP BY ALL""")}
    assert got == dict(expected)
    assert len({k[2] for k in expected}) >= 3
