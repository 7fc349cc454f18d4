"""Every KPI in the warehouse views equals a brute-force recomputation from the raw generated
events, with windows that span several micro-batches."""
import collections
import json
import math
import re
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
SLIDING = "1d/1h,2h/30m"   # 24-hour windows every hour; 2-hour windows every 30 minutes
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
    args = ["run", "--once", "--json", "--max-batch-records", "250", "--sliding", SLIDING,
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
            key = (win(first["event_time"], DAY), brand, first.get("utm_source") or "(direct)",
                   first.get("utm_campaign") or "(none)")
            c = expected[key]
            c["sessions"] += 1
            c["viewed_product"] += "product_view" in types
            c["added_to_cart"] += "add_to_cart" in types
            c["converted"] += converted
            c["bounced"] += bounced
            c["orders"] += len({e["order_id"] for e in s if e.get("order_id")})
            c["social"] += social
            c["social_conv"] += social and converted
            revenue[key] += sum(e.get("order_value") or 0 for e in s)
    dims = "window_start, brand, utm_source, utm_campaign"
    got = {tuple(r[d] for d in dims.split(", ")): r for r in rows(con, f"""
        SELECT {dims}, sessions, converted_sessions AS converted, bounced_sessions AS bounced,
               orders, revenue, social_referred_sessions AS social,
               social_referred_conversions AS social_conv, conversion_rate_pct
        FROM kpi_web WHERE window_seconds = 86400""")}
    assert set(got) == set(expected)
    for key, c in expected.items():
        r = got[key]
        assert (r["sessions"], r["converted"], r["bounced"], r["orders"], r["social"],
                r["social_conv"]) == (c["sessions"], c["converted"], c["bounced"], c["orders"],
                                      c["social"], c["social_conv"]), key
        assert r["revenue"] == pytest.approx(revenue[key])
        assert r["conversion_rate_pct"] == pytest.approx(100 * c["converted"] / c["sessions"])
    assert sum(c["converted"] for c in expected.values()) > 0
    assert sum(c["social"] for c in expected.values()) > 0
    # Campaigns really split the traffic: several campaigns, and sessions without one.
    campaigns = {k[3] for k in expected}
    assert "(none)" in campaigns and len(campaigns - {"(none)"}) >= 2
    funnel = {tuple(r[d] for d in dims.split(", ")): r for r in rows(
        con, "SELECT * FROM kpi_funnel WHERE window_seconds = 86400")}
    assert {k: (r["sessions"], r["viewed_product"], r["added_to_cart"], r["ordered"])
            for k, r in funnel.items()} == {
        k: (c["sessions"], c["viewed_product"], c["added_to_cart"], c["converted"])
        for k, c in expected.items()}


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


def sliding_windows(ms, size, period):
    """Starts of the sliding windows of ``size`` every ``period`` containing ``ms``, by
    brute force over every period-aligned start that could."""
    t = ms // 1000
    first = (t - size) // period * period
    return [datetime.fromtimestamp(s, timezone.utc).replace(tzinfo=None)
            for s in range(first, t + 1, period) if s <= t < s + size]


@pytest.mark.parametrize("size,period", [(DAY, HOUR), (2 * HOUR, 1800)])
def test_sliding_windows(con, events, scorer, size, period):
    """Rolling mentions, sentiment and NPS: every sliding window equals a recount of the raw
    events inside it; the fixed-window tables hold no sliding rows."""
    social = collections.defaultdict(collections.Counter)
    polarity = collections.defaultdict(float)
    survey = collections.defaultdict(collections.Counter)
    for role, e in events:
        starts = sliding_windows(e["event_time"], size, period)
        assert len(starts) == size // period
        for start in starts:
            if role == "social":
                c = social[(start, e.get("brand") or "(none)")]
                c["events"] += 1
                if e["event_type"] in ("post", "comment", "mention") and not e["author_is_brand"]:
                    c["mentions"] += 1
                    if e.get("text"):
                        s = scorer.score(e["text"], e.get("lang"))
                        c["scored"] += 1
                        c[s["label"]] += 1
                        polarity[(start, e.get("brand") or "(none)")] += s["polarity"]
                c["likes"] += e["event_type"] == "like"
            elif role == "survey":
                c = survey[(start, e["brand"], e["survey_type"])]
                c["responses"] += 1
                c["promoters"] += e["score"] >= 9
                c["detractors"] += e["score"] <= 6
                c["top2"] += e["score"] >= 4
                c["score_sum"] += e["score"]
    got = {(r["window_start"], r["brand"]): r for r in rows(con, f"""
        SELECT * FROM kpi_social_sliding
        WHERE window_seconds = {size} AND window_period_seconds = {period}""")}
    # Every window with a social event has a row (a like alone gives a row of zeros).
    assert set(got) == set(social)
    for key, c in social.items():
        r = got[key]
        assert r["window_end"] - r["window_start"] == (
            datetime.fromtimestamp(size) - datetime.fromtimestamp(0))
        assert (r["mentions"], r["scored"], r["positive"], r["negative"], r["likes"]) == (
            c["mentions"], c["scored"], c["positive"], c["negative"], c["likes"]), key
        if c["scored"]:
            assert r["sentiment_mean"] == pytest.approx(polarity[key] / c["scored"])
    got = {(r["window_start"], r["brand"], r["survey_type"]): r for r in rows(con, f"""
        SELECT * FROM kpi_survey_sliding
        WHERE window_seconds = {size} AND window_period_seconds = {period}""")}
    assert set(got) == set(survey)
    for (start, brand, kind), c in survey.items():
        r = got[(start, brand, kind)]
        assert r["responses"] == c["responses"]
        if kind == "NPS":
            assert r["nps"] == pytest.approx(100 * (c["promoters"] - c["detractors"])
                                             / c["responses"])
        elif kind == "CSAT":
            assert r["csat_top2_pct"] == pytest.approx(100 * c["top2"] / c["responses"])
        else:
            assert r["ces_mean"] == pytest.approx(c["score_sum"] / c["responses"])
    # Windows really overlap, and the fixed tables keep only the --windows sizes.
    assert len({k[0] for k in social}) > 8 * HOUR // period
    assert {r["window_seconds"] for r in rows(
        con, "SELECT DISTINCT window_seconds FROM social_kpis")} == {HOUR, DAY}
    assert rows(con, "SELECT count(*) AS n FROM social_kpis WHERE window_seconds = 86400 "
                     "AND window_start <> date_trunc('day', window_start)")[0]["n"] == 0


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


# -- customer journey and churn risk ----------------------------------------------------------
# Customer keys come from the warehouse's identity_map (stitching has its own tests in
# tests/test_identity.py); everything after the key is recomputed here from the raw events
# with the rules of docs/identity.md.
PHASES = ("awareness", "favorability", "consideration", "purchase", "loyalty")


def phase_of(orders, latest_nps, positive_voice, considered, engaged):
    promoter = latest_nps is not None and latest_nps >= 9
    if orders >= 2 or (orders >= 1 and (promoter or positive_voice)):
        return "loyalty"
    if orders >= 1:
        return "purchase"
    if considered:
        return "consideration"
    if engaged:
        return "favorability"
    return "awareness"


@pytest.fixture(scope="module")
def touchpoints(con, events, scorer):
    """One dict per event with a customer identifier: key, brand, time and journey evidence."""
    from cx360.transforms.identity import (Pseudonymiser, implicit_key, primary_identifier,
                                           pseudonym_key)

    pseudo = Pseudonymiser(pseudonym_key())
    keys = dict(con.execute("SELECT identifier, customer_key FROM identity_map").fetchall())
    out = []
    for role, raw in events:
        e = pseudo.apply(dict(raw, _role=role))
        identifier = primary_identifier(e)
        if identifier is None:
            continue
        text = None
        if role == "social" and e["event_type"] in ("post", "comment", "mention") \
                and not e.get("author_is_brand"):
            text = e.get("text")
        elif role == "survey":
            text = e.get("comment")
        score = scorer.score(text, e.get("lang")) if text and text.strip() else None
        label = score["label"] if score else None
        kind = e.get("event_type") or ""
        aimed = role == "social" and bool(e.get("aimed_at_brand"))
        out.append({
            "key": keys.get(identifier) or implicit_key(identifier), "event_id": e["event_id"],
            "brand": e.get("brand") or "(none)", "time": e["event_time"],
            "polarity": score["polarity"] if score else None,
            "order_id": e.get("order_id") if role == "web" else None,
            "nps": e["score"] if role == "survey" and e["survey_type"] == "NPS" else None,
            "positive_voice": role == "social" and label == "positive" and kind != "reply",
            "considered": (role == "web" and kind in ("product_view", "add_to_cart")) or aimed,
            "engaged": (role == "social" and kind in ("like", "comment", "share"))
                       or label == "positive" or (role == "web" and kind == "account_link"),
        })
    assert len(out) == rows(con, "SELECT count(*) AS n FROM customer_touchpoints")[0]["n"]
    return out


def journey_steps(touchpoints, size):
    """{(customer, brand, window_start): (phase at the end of the previous active window or
    None, phase at the end of this window)}, evidence cumulative up to each window end."""
    by_customer = collections.defaultdict(list)
    for t in touchpoints:
        by_customer[(t["key"], t["brand"])].append(t)
        by_customer[(t["key"], "(all)")].append(t)
    steps = {}
    for (key, brand), items in by_customer.items():
        items.sort(key=lambda t: (t["time"], t["event_id"]))
        windows = sorted({win(t["time"], size) for t in items})
        previous = None
        for start in windows:
            upto = [t for t in items if win(t["time"], size) <= start]
            nps = [t["nps"] for t in upto if t["nps"] is not None]
            phase = phase_of(len({t["order_id"] for t in upto if t["order_id"]}),
                             nps[-1] if nps else None,
                             any(t["positive_voice"] for t in upto),
                             any(t["considered"] for t in upto),
                             any(t["engaged"] for t in upto))
            steps[(key, brand, start)] = (previous, phase)
            previous = phase
    return steps


@pytest.mark.parametrize("size", [HOUR, DAY])
def test_journey_transitions(con, touchpoints, size):
    steps = journey_steps(touchpoints, size)
    expected = collections.Counter(
        (start, brand, before or "(new)", after) for (_, brand, start), (before, after)
        in steps.items())
    got = {(r["window_start"], r["brand"], r["from_phase"], r["to_phase"]): r for r in rows(
        con, f"SELECT * FROM kpi_journey_transitions WHERE window_seconds = {size}")}
    assert {k: r["customers"] for k, r in got.items()} == dict(expected)
    for (_, _, before, after), r in got.items():
        assert r["direction"] == ("new" if before == "(new)" else "same" if before == after else
                                  "forward" if PHASES.index(after) > PHASES.index(before)
                                  else "back")
    if size == HOUR:  # 8 hours of events: customers really move between phases
        moves = collections.Counter(r["direction"] for r in got.values()
                                    for _ in range(r["customers"]))
        assert moves["forward"] >= 10 and moves["same"] and moves["new"]


def test_journey_phase_counts(con, touchpoints):
    """kpi_journey = the phase after the last window of each customer."""
    last = {}
    for (key, brand, start), (_, phase) in journey_steps(touchpoints, DAY).items():
        if (key, brand) not in last or start > last[(key, brand)][0]:
            last[(key, brand)] = (start, phase)
    expected = collections.Counter((brand, phase) for (_, brand), (_, phase) in last.items())
    got = {(r["brand"], r["journey_phase"]): r["customers"]
           for r in rows(con, "SELECT * FROM kpi_journey")}
    assert got == dict(expected)
    assert {phase for _, phase in got} == set(PHASES)


def test_churn_risk_distribution(con, events, touchpoints, scorer):
    # Open complaints: customer posts aimed at a brand, labelled negative, never replied to.
    inbound, replied = {}, set()
    for role, e in events:
        if role != "social":
            continue
        if e["event_type"] in ("post", "comment", "mention") and not e["author_is_brand"] \
                and e["aimed_at_brand"] and e.get("brand"):
            label = scorer.score(e["text"], e.get("lang"))["label"] if e.get("text") else "neutral"
            inbound.setdefault((e["platform"], e["post_id"]), (e["event_id"], label))
        if e["event_type"] == "reply" and e.get("parent_post_id"):
            replied.add((e["platform"], e["parent_post_id"]))
    open_ids = {event_id for k, (event_id, label) in inbound.items()
                if label == "negative" and k not in replied}
    as_of = max(t["time"] for t in touchpoints)
    week = 7 * 86400_000
    by_customer = collections.defaultdict(list)
    for t in touchpoints:
        by_customer[t["key"]].append(t)
    risk = {}
    for key, items in by_customer.items():
        items.sort(key=lambda t: (t["time"], t["event_id"]))
        nps = [t["nps"] for t in items if t["nps"] is not None]
        recent = [t["polarity"] for t in items
                  if t["polarity"] is not None and t["time"] > as_of - week]
        before = [t["polarity"] for t in items
                  if t["polarity"] is not None and t["time"] <= as_of - week]
        trend = sum(recent) / len(recent) - sum(before) / len(before) \
            if recent and before else 0
        days = (as_of - max(t["time"] for t in items)) / 86400_000
        score = (0.5 * min(days / 30, 1) + 0.2 * bool(nps and nps[-1] <= 6)
                 + 0.15 * any(t["event_id"] in open_ids for t in items) + 0.15 * (trend < 0))
        risk[key] = round(min(1.0, score), 3)
    assert {r["customer_key"]: r["churn_risk"] for r in rows(
        con, "SELECT customer_key, churn_risk FROM customer_360")} == pytest.approx(risk)
    members = collections.defaultdict(set)
    for t in touchpoints:
        members[t["brand"]].add(t["key"])
        members["(all)"].add(t["key"])
    expected = {}
    for brand, keys in members.items():
        for key in keys:
            band = next(b for b, upper in (("low", 0.25), ("medium", 0.5), ("high", 0.75),
                                           ("critical", math.inf)) if risk[key] < upper)
            n, total = expected.get((brand, band), (0, 0.0))
            expected[(brand, band)] = (n + 1, total + risk[key])
    got = {(r["brand"], r["risk_band"]): r for r in rows(con, "SELECT * FROM kpi_churn_risk")}
    assert set(got) == set(expected)
    for (brand, band), (n, total) in expected.items():
        r = got[(brand, band)]
        assert r["customers"] == n
        assert r["churn_risk_sum"] == pytest.approx(total)
        assert r["mean_churn_risk"] == pytest.approx(total / n)
        brand_n = sum(v[0] for (b, _), v in expected.items() if b == brand)
        brand_total = sum(v[1] for (b, _), v in expected.items() if b == brand)
        assert r["customers_pct"] == pytest.approx(100 * n / brand_n)
        assert r["brand_mean_churn_risk"] == pytest.approx(brand_total / brand_n)
    # The 8 hours of generated events leave recency near 0: scores differ by NPS and complaints
    # (the band edges are tested with hand-made customers below).
    assert len(set(risk.values())) >= 3


def test_churn_risk_bands_of_hand_made_customers(tmp_path):
    """Band edges and means with scores worked out by hand: as_of = C's newest touchpoint
    (2026-11-20 12:00); recency = 0.5 x min(days / 30, 1), NPS <= 6 adds 0.2, an open
    complaint 0.15."""
    from cx360.transforms.warehouse import TABLES, open_warehouse

    wh = open_warehouse(f"duckdb:{tmp_path}/hand.duckdb")
    wh.ensure_tables(TABLES.values())
    wh.ensure_views()
    touchpoints = [  # event, account, brand, time, touchpoint, survey, score
        ("a1", "A", "Kaffino", "2026-10-21 12:00", "web:page_view", None, None),    # 30 d: 0.5
        ("b1", "B", "Kaffino", "2026-11-05 12:00", "web:page_view", None, None),    # 15 d: 0.25
        ("c1", "C", "Kaffino", "2026-11-20 11:00", "survey:shop", "NPS", 3),        # 0.2
        ("c2", "C", "Telvana", "2026-11-20 12:00", "web:page_view", None, None),
        ("d1", "D", "Telvana", "2026-10-21 12:00", "survey:shop", "NPS", 2),        # 0.7
        ("e1", "E", "Telvana", "2026-10-01 12:00", "survey:shop", "NPS", 5),        # 0.85
        ("e2", "E", "Telvana", "2026-10-01 12:00", "instagram:post", None, None),   # complaint
    ]
    for event, account, brand, at, touchpoint, kind, score in touchpoints:
        wh.con.execute(
            "INSERT INTO customer_touchpoints (event_id, identifier, channel, touchpoint, "
            "event_time, brand, survey_type, score, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [event, f"acct:{account}", touchpoint.split(":")[0].replace("instagram", "social"),
             touchpoint, at, brand, kind, score, "negative" if event == "e2" else None])
    wh.con.execute("INSERT INTO inbound_posts (platform, post_id, event_id, brand, event_type, "
                   "inbound_time, language, polarity, label) VALUES ('instagram', 'p1', 'e2', "
                   "'Telvana', 'post', '2026-10-01 12:00', 'de', -0.6, 'negative')")
    got = {r["customer_key"]: r["churn_risk"] for r in rows(
        wh.con, "SELECT customer_key, churn_risk FROM customer_360")}
    assert got == {"A": 0.5, "B": 0.25, "C": 0.2, "D": 0.7, "E": 0.85}
    got = {(r["brand"], r["risk_band"]): (r["customers"], round(r["mean_churn_risk"], 6),
                                          round(r["brand_mean_churn_risk"], 6))
           for r in rows(wh.con, "SELECT * FROM kpi_churn_risk")}
    assert got == {
        ("(all)", "low"): (1, 0.2, 0.5), ("(all)", "medium"): (1, 0.25, 0.5),
        ("(all)", "high"): (2, 0.6, 0.5), ("(all)", "critical"): (1, 0.85, 0.5),
        ("Kaffino", "low"): (1, 0.2, 0.316667), ("Kaffino", "medium"): (1, 0.25, 0.316667),
        ("Kaffino", "high"): (1, 0.5, 0.316667),
        ("Telvana", "low"): (1, 0.2, 0.583333), ("Telvana", "high"): (1, 0.7, 0.583333),
        ("Telvana", "critical"): (1, 0.85, 0.583333)}
    wh.close()


def test_every_kpi_view_has_rows_and_is_documented(con):
    import pathlib

    views = [r["view_name"] for r in rows(con, """
        SELECT view_name FROM duckdb_views() WHERE NOT internal AND view_name LIKE 'kpi\\_%' ESCAPE '\\'
        ORDER BY view_name""")]
    assert {"kpi_social", "kpi_web", "kpi_funnel", "kpi_survey", "kpi_journey",
            "kpi_journey_transitions", "kpi_churn_risk", "kpi_social_sliding",
            "kpi_survey_sliding"} <= set(views)
    empty = [v for v in views if not rows(con, f"SELECT count(*) AS n FROM {v}")[0]["n"]]
    assert empty == []
    catalogue = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "kpis.md").read_text()
    assert [v for v in views if not re.search(rf"`{v}[`.]", catalogue)] == []
