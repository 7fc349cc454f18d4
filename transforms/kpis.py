"""CX KPI components from de-duplicated events: the rows of the KPI tables for one group of
events. Every row is either a mergeable component (counts and sums keyed by window and
dimensions, added up across micro-batches) or a fact keyed by its own id (inbound posts,
brand replies, web events), from which views derive what needs several events at once
(response times, sessions). docs/kpis.md gives each KPI's formula.
"""
from __future__ import annotations

import json
import pathlib
from typing import Iterable, Iterator

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

#: The component tables: per table, its dimension columns and its component columns (the
#: order of the tuples :func:`event_components` yields). Float components start at 0.0.
COMPONENT_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "social_kpis": (("brand", "platform", "language"), SOCIAL_COUNTERS + ("polarity_sum",)),
    "share_of_voice_counts": (("brand", "platform"), ("mentions", "reach")),
    "aspect_mentions": (("source", "brand", "aspect", "label"), ("mentions",)),
    "survey_kpis": (("brand", "survey_type", "touchpoint", "channel", "language"),
                    SURVEY_COUNTERS + ("comment_polarity_sum",)),
}
#: Component tables that also have sliding-window twins (``--sliding``), and their names.
SLIDING_TABLES = {"social_kpis": "social_kpis_sliding", "survey_kpis": "survey_kpis_sliding"}
#: The fact tables: one row per event, keyed by the event (or its post).
FACT_TABLES = ("inbound_posts", "brand_replies", "web_events")


def score_event(event: dict, scorer) -> dict | None:
    """The sentiment score of an event's text, or None when it has none that counts: social
    posts, comments and mentions by non-brand authors, and survey free texts. Score each
    event once and pass the result to :func:`event_components` / :func:`event_facts`."""
    role = event["_role"]
    if role == "social":
        text = event.get("text")
        if event["event_type"] in VOICE_TYPES and not event.get("author_is_brand") and text:
            return scorer.score(text, event.get("lang"))
    elif role == "survey":
        comment = event.get("comment")
        if comment and comment.strip():
            return scorer.score(comment, event.get("lang"))
    return None


def event_components(e: dict, score: dict | None) -> Iterator[tuple[str, tuple, tuple]]:
    """The mergeable components of one event: ``(table, dimensions, components)`` with the
    values in the column order of :data:`COMPONENT_TABLES`, to be summed per window and
    (table, dimensions). An event can yield several rows of one table (share of voice: one per
    brand it names; aspects: one per aspect). No window here: the micro-batch mode adds the
    window columns itself (:class:`KpiComputer`), the streaming mode gets them from Beam's
    windows (transforms/windowed.py)."""
    role = e["_role"]
    if role == "social":
        yield from _social_components(e, score)
    elif role == "survey":
        yield from _survey_components(e, score)


def _social_components(e: dict, score: dict | None) -> Iterator[tuple[str, tuple, tuple]]:
    brand = e.get("brand") or NONE
    kind = e["event_type"]
    by_brand = bool(e.get("author_is_brand"))
    voice = kind in VOICE_TYPES and not by_brand
    language = score["language"] if score else "und"
    c = dict.fromkeys(SOCIAL_COUNTERS, 0)
    polarity = 0.0
    if voice:
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
    yield ("social_kpis", (brand, e["platform"], language),
           tuple(c[name] for name in SOCIAL_COUNTERS) + (polarity,))
    if voice:
        named = set(e.get("mentioned_brands") or ())
        if e.get("brand"):
            named.add(e["brand"])
        for name in sorted(named):
            yield "share_of_voice_counts", (name, e["platform"]), (1, e.get("reach") or 0)
        if score:
            yield from _aspect_components("social", brand, score)


def _aspect_components(source: str, brand: str, score: dict):
    for aspect in score["aspects"]:
        yield "aspect_mentions", (source, brand, aspect, score["label"]), (1,)


def _survey_components(e: dict, score: dict | None) -> Iterator[tuple[str, tuple, tuple]]:
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
    if score:
        c["comments"] = 1
        c["comment_positive"] = int(score["label"] == "positive")
        c["comment_negative"] = int(score["label"] == "negative")
        polarity = score["polarity"]
    dims = (e["brand"], kind, e.get("touchpoint") or UNKNOWN, e.get("channel") or UNKNOWN,
            e.get("lang") or UNKNOWN)
    yield "survey_kpis", dims, tuple(c[name] for name in SURVEY_COUNTERS) + (polarity,)
    if score:
        yield from _aspect_components("survey", e["brand"], score)


def event_facts(e: dict, score: dict | None) -> Iterator[tuple[str, dict]]:
    """The fact rows of one event, ``(table, row)``: an inbound post (a customer's post aimed
    at a brand), a brand reply to a post, or a web event. Keyed by their own ids, so writing
    one twice (a re-run, a retried write) leaves the same row."""
    role = e["_role"]
    if role == "web":
        yield "web_events", _web(e)
    elif role != "social":
        return
    kind = e["event_type"]
    by_brand = bool(e.get("author_is_brand"))
    if kind in VOICE_TYPES and not by_brand and e.get("aimed_at_brand") and e.get("brand"):
        yield "inbound_posts", {
            "platform": e["platform"], "post_id": e["post_id"], "event_id": e["event_id"],
            "brand": e["brand"], "event_type": kind, "inbound_time": e["event_time"],
            "language": score["language"] if score else "und",
            "polarity": score["polarity"] if score else 0.0,
            "label": score["label"] if score else "neutral",
            "aspects": ",".join(score["aspects"]) if score and score["aspects"] else None}
    if kind == "reply" and e.get("parent_post_id"):
        yield "brand_replies", {"event_id": e["event_id"], "platform": e["platform"],
                                "parent_post_id": e["parent_post_id"],
                                "brand": e.get("brand") or NONE, "reply_time": e["event_time"]}


def component_row(table: str, dims: tuple, values: tuple) -> dict:
    """A component row without its window columns."""
    dim_names, names = COMPONENT_TABLES[table]
    row = dict(zip(dim_names, dims))
    row.update(zip(names, values))
    return row


class KpiComputer:
    """Turns events into KPI table rows (micro-batch mode: components summed per window over
    one batch; the warehouse adds them to the stored rows). ``scorer`` is a SentimentScorer
    (or anything with ``score(text, lang_hint) -> {language, polarity, label, aspects}``).

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

    def _windows(self, event_time: int) -> tuple[list, list]:
        """(size, period, start) of every fixed window of an event (period None), and per
        sliding family the start of its *pane*: the period-long slice holding the event
        (for tables with sliding twins). Components are summed per pane first and spread to
        the size/period windows covering the pane afterwards (:func:`_spread_panes`), so the
        per-event cost does not grow with the number of overlapping windows."""
        fixed = [(size, None, window_start_ms(event_time, size)) for size in self.sizes]
        return fixed, fixed + [(size, period, window_start_ms(event_time, period))
                               for size, period in self.sliding]

    def rows(self, events: Iterable[dict]) -> dict[str, list[dict]]:
        sums: dict[str, dict[tuple, list]] = {table: {} for table in COMPONENT_TABLES}
        facts: dict[str, list[dict]] = {table: [] for table in FACT_TABLES}
        for event in events:
            score = score_event(event, self.scorer)
            fixed, with_sliding = self._windows(event["event_time"])
            for table, dims, values in event_components(event, score):
                acc = sums[table]
                for window in (with_sliding if table in SLIDING_TABLES else fixed):
                    key = window + dims
                    stored = acc.get(key)
                    if stored is None:
                        acc[key] = list(values)
                    else:
                        for i, value in enumerate(values):
                            if value:
                                stored[i] += value
            for table, row in event_facts(event, score):
                facts[table].append(row)
        out: dict[str, list[dict]] = {}
        for table, acc in sums.items():
            dim_names, names = COMPONENT_TABLES[table]
            fixed_rows, pane_rows = [], []
            for (size, period, start, *dims), values in acc.items():
                row = _window_cols(size, start, period)
                row.update(zip(dim_names, dims))
                row.update(zip(names, values))
                (fixed_rows if period is None else pane_rows).append(row)
            out[table] = fixed_rows
            if table in SLIDING_TABLES:
                out[SLIDING_TABLES[table]] = _spread_panes(pane_rows, names)
        out.update(facts)
        return out


def _web(e: dict) -> dict:
    return {"event_id": e["event_id"], "brand": e["brand"], "event_time": e["event_time"],
            "event_type": e["event_type"], "session_id": e["session_id"],
            "cookie_id": e["cookie_id"], "account_id": e.get("account_id"),
            "page_type": e.get("page_type"), "product_id": e.get("product_id"),
            "referrer": e.get("referrer"), "utm_source": e.get("utm_source"),
            "utm_medium": e.get("utm_medium"), "utm_campaign": e.get("utm_campaign"),
            "order_id": e.get("order_id"), "order_value": e.get("order_value"),
            "currency": e.get("currency"), "device": e.get("device")}
