"""CX KPI components from de-duplicated events: the rows of the KPI tables for one group of
events. Every row is either a mergeable component (counts and sums keyed by window and
dimensions, added up across micro-batches) or a fact keyed by its own id (inbound posts,
brand replies, web events), from which views derive what needs several events at once
(response times, sessions). docs/kpis.md gives each KPI's formula.
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable, Iterable

from cx360.transforms.counts import NONE, UNKNOWN, window_start_ms

BRANDS_FILE = pathlib.Path(__file__).resolve().parent / "data" / "brands.json"

#: Social event types that carry a customer's voice (text about a brand).
VOICE_TYPES = frozenset({"post", "comment", "mention"})


def load_brands(path: str | pathlib.Path | None = None) -> list[dict]:
    """Rows of the brands dimension from a JSON file ({"brands": [{brand, industry, own}]})."""
    data = json.loads(pathlib.Path(path or BRANDS_FILE).read_text(encoding="utf-8"))
    rows = []
    for entry in data["brands"]:
        if not entry.get("brand"):
            raise ValueError(f"brand entry without a name: {entry}")
        rows.append({"brand": entry["brand"], "industry": entry.get("industry") or NONE,
                     "own": bool(entry.get("own", False))})
    return rows


class _Adder:
    """Sums dict components per key."""

    def __init__(self):
        self.rows: dict[tuple, dict] = {}

    def add(self, key: tuple, make: Callable[[], dict], **increments) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = make()
        for name, value in increments.items():
            if value:
                row[name] += value

    def values(self) -> list[dict]:
        return list(self.rows.values())


def _window_cols(size: int, start: int, period: int | None = None) -> dict:
    cols = {"window_seconds": size, "window_start": start, "window_end": start + size * 1000}
    if period is not None:
        cols["window_period_seconds"] = period
    return cols


def sliding_starts(event_time_ms: int, size_s: int, period_s: int) -> range:
    """Starts (epoch ms) of the sliding windows of ``size_s`` every ``period_s`` (aligned to
    the epoch) that contain ``event_time_ms``: ``size_s / period_s`` of them."""
    latest = window_start_ms(event_time_ms, period_s)
    return range(latest - (size_s - period_s) * 1000, latest + 1, period_s * 1000)


def _spread_panes(panes: list[dict], counters: tuple[str, ...]) -> list[dict]:
    """Pane rows (components of one period-long slice, ``window_start`` = the pane's start)
    -> rows of every sliding window covering the pane (windows start at period multiples, so
    a window holds whole panes), components summed per window and dimensions."""
    windows: dict[tuple[int, int], dict] = {}
    dim_ids: dict[tuple, int] = {}   # a tuple's hash is not cached: hash the dimensions once
    for pane in panes:
        size, period = pane["window_seconds"], pane["window_period_seconds"]
        dims = tuple((k, v) for k, v in pane.items()
                     if k not in counters and k not in ("window_start", "window_end"))
        dim_id = dim_ids.setdefault(dims, len(dim_ids))
        nonzero = [(c, pane[c]) for c in counters if pane[c]]
        for start in sliding_starts(pane["window_start"], size, period):
            row = windows.get((start, dim_id))
            if row is None:
                row = windows[(start, dim_id)] = dict(dims, window_start=start,
                                                    window_end=start + size * 1000,
                                                    **dict.fromkeys(counters, 0))
            for name, value in nonzero:
                row[name] += value
    return list(windows.values())


SOCIAL_COUNTERS = ("mentions", "ugc_posts", "inbound", "scored", "positive", "neutral",
                   "negative", "brand_posts", "brand_replies", "brand_post_reach", "likes",
                   "shares", "comments")
SURVEY_COUNTERS = ("responses", "score_sum", "promoters", "passives", "detractors", "top2",
                   "agree", "comments", "comment_positive", "comment_negative")


class KpiComputer:
    """Turns events into KPI table rows. ``scorer`` is a SentimentScorer (or anything with
    ``score(text, lang_hint) -> {language, polarity, label, aspects}``).

    ``sliding``: ``(size, period)`` pairs in seconds; social and survey components are also
    computed for sliding windows of ``size`` every ``period`` (tables ``*_sliding``, keyed by
    the period too, so they never mix with the fixed windows)."""

    def __init__(self, window_sizes: Iterable[int], scorer,
                 sliding: Iterable[tuple[int, int]] = ()):
        self.sizes = tuple(window_sizes)
        self.sliding = tuple((int(size), int(period)) for size, period in sliding)
        for size, period in self.sliding:
            if not 0 < period < size or size % period:
                raise ValueError(f"sliding windows of {size} s need a period shorter than the "
                                 f"size that divides it, got {period} s")
        self.scorer = scorer

    def _windows(self, event_time: int) -> Iterable[tuple[int, int | None, int]]:
        """(size, period, start) of every fixed window of an event (period None), and per
        sliding family the start of its *pane*: the period-long slice holding the event.
        Components are summed per pane first and spread to the size/period windows covering
        the pane afterwards (:func:`_spread_panes`), so the per-event cost does not grow with
        the number of overlapping windows."""
        for size in self.sizes:
            yield size, None, window_start_ms(event_time, size)
        for size, period in self.sliding:
            yield size, period, window_start_ms(event_time, period)

    def rows(self, events: Iterable[dict]) -> dict[str, list[dict]]:
        social, voice, aspects, survey = _Adder(), _Adder(), _Adder(), _Adder()
        inbound, replies, web = [], [], []
        for event in events:
            role = event["_role"]
            if role == "social":
                self._social(event, social, voice, aspects, inbound, replies)
            elif role == "survey":
                self._survey(event, survey, aspects)
            else:
                web.append(self._web(event))
        social_rows, survey_rows = social.values(), survey.values()
        return {"social_kpis": [r for r in social_rows if "window_period_seconds" not in r],
                "social_kpis_sliding": _spread_panes(
                    [r for r in social_rows if "window_period_seconds" in r],
                    SOCIAL_COUNTERS + ("polarity_sum",)),
                "share_of_voice_counts": voice.values(),
                "aspect_mentions": aspects.values(),
                "survey_kpis": [r for r in survey_rows if "window_period_seconds" not in r],
                "survey_kpis_sliding": _spread_panes(
                    [r for r in survey_rows if "window_period_seconds" in r],
                    SURVEY_COUNTERS + ("comment_polarity_sum",)),
                "inbound_posts": inbound, "brand_replies": replies, "web_events": web}

    # -- social ----------------------------------------------------------------------------
    def _social(self, e: dict, social: _Adder, voice: _Adder, aspects: _Adder,
                inbound: list, replies: list) -> None:
        brand = e.get("brand") or NONE
        kind = e["event_type"]
        by_brand = bool(e.get("author_is_brand"))
        text = e.get("text")
        score = None
        if kind in VOICE_TYPES and not by_brand and text:
            score = self.scorer.score(text, e.get("lang"))
        language = score["language"] if score else "und"
        c = dict.fromkeys(SOCIAL_COUNTERS, 0)
        polarity = 0.0
        if kind in VOICE_TYPES and not by_brand:
            c["mentions"] = 1
            c["ugc_posts"] = int(kind == "post")
            c["inbound"] = int(bool(e.get("aimed_at_brand")))
            if score:
                c["scored"] = 1
                c[score["label"]] = 1
                polarity = score["polarity"]
            c["comments"] = int(kind == "comment")
        elif kind == "post" and by_brand:
            c["brand_posts"] = 1
            c["brand_post_reach"] = e.get("reach") or 0
        elif kind == "reply":
            c["brand_replies"] = 1
        elif kind == "like":
            c["likes"] = 1
        elif kind == "share":
            c["shares"] = 1
        for size, period, start in self._windows(e["event_time"]):
            social.add((size, period, start, brand, e["platform"], language),
                       lambda: dict(_window_cols(size, start, period), brand=brand,
                                    platform=e["platform"], language=language,
                                    polarity_sum=0.0, **dict.fromkeys(SOCIAL_COUNTERS, 0)),
                       polarity_sum=polarity, **c)
        if kind in VOICE_TYPES and not by_brand:
            named = set(e.get("mentioned_brands") or ())
            if e.get("brand"):
                named.add(e["brand"])
            for size in self.sizes:
                start = window_start_ms(e["event_time"], size)
                for name in named:
                    voice.add((size, start, name, e["platform"]),
                              lambda: dict(_window_cols(size, start), brand=name,
                                           platform=e["platform"], mentions=0, reach=0),
                              mentions=1, reach=e.get("reach") or 0)
            if score:
                self._aspects(aspects, "social", brand, e["event_time"], score)
            if e.get("aimed_at_brand") and e.get("brand"):
                inbound.append({
                    "platform": e["platform"], "post_id": e["post_id"], "event_id": e["event_id"],
                    "brand": e["brand"], "event_type": kind, "inbound_time": e["event_time"],
                    "language": language, "polarity": score["polarity"] if score else 0.0,
                    "label": score["label"] if score else "neutral",
                    "aspects": ",".join(score["aspects"]) if score and score["aspects"] else None})
        if kind == "reply" and e.get("parent_post_id"):
            replies.append({"event_id": e["event_id"], "platform": e["platform"],
                            "parent_post_id": e["parent_post_id"], "brand": brand,
                            "reply_time": e["event_time"]})

    def _aspects(self, aspects: _Adder, source: str, brand: str, event_time: int,
                 score: dict) -> None:
        for aspect in score["aspects"]:
            for size in self.sizes:
                start = window_start_ms(event_time, size)
                aspects.add((size, start, source, brand, aspect, score["label"]),
                            lambda: dict(_window_cols(size, start), source=source, brand=brand,
                                         aspect=aspect, label=score["label"], mentions=0),
                            mentions=1)

    # -- surveys ---------------------------------------------------------------------------
    def _survey(self, e: dict, survey: _Adder, aspects: _Adder) -> None:
        kind, score_value = e["survey_type"], e["score"]
        c = dict.fromkeys(SURVEY_COUNTERS, 0)
        c["responses"] = 1
        c["score_sum"] = score_value
        if kind == "NPS":
            c["promoters"] = int(score_value >= 9)
            c["passives"] = int(7 <= score_value <= 8)
            c["detractors"] = int(score_value <= 6)
        elif kind == "CSAT":
            c["top2"] = int(score_value >= 4)
        elif kind == "CES":
            c["agree"] = int(score_value >= 5)
        polarity = 0.0
        comment = e.get("comment")
        if comment and comment.strip():
            score = self.scorer.score(comment, e.get("lang"))
            c["comments"] = 1
            c["comment_positive"] = int(score["label"] == "positive")
            c["comment_negative"] = int(score["label"] == "negative")
            polarity = score["polarity"]
            self._aspects(aspects, "survey", e["brand"], e["event_time"], score)
        dims = (e["brand"], kind, e.get("touchpoint") or UNKNOWN, e.get("channel") or UNKNOWN,
                e.get("lang") or UNKNOWN)
        for size, period, start in self._windows(e["event_time"]):
            survey.add((size, period, start) + dims,
                       lambda: dict(_window_cols(size, start, period), brand=dims[0],
                                    survey_type=dims[1],
                                    touchpoint=dims[2], channel=dims[3], language=dims[4],
                                    comment_polarity_sum=0.0, **dict.fromkeys(SURVEY_COUNTERS, 0)),
                       comment_polarity_sum=polarity, **c)

    # -- web -------------------------------------------------------------------------------
    @staticmethod
    def _web(e: dict) -> dict:
        return {"event_id": e["event_id"], "brand": e["brand"], "event_time": e["event_time"],
                "event_type": e["event_type"], "session_id": e["session_id"],
                "cookie_id": e["cookie_id"], "account_id": e.get("account_id"),
                "page_type": e.get("page_type"), "product_id": e.get("product_id"),
                "referrer": e.get("referrer"), "utm_source": e.get("utm_source"),
                "utm_medium": e.get("utm_medium"), "utm_campaign": e.get("utm_campaign"),
                "order_id": e.get("order_id"), "order_value": e.get("order_value"),
                "currency": e.get("currency"), "device": e.get("device")}
