"""Declarative table specs: one description of each warehouse table, rendered per backend.

A spec says what a table holds (columns and their logical types), what identifies a row (the
key), how a new row for an existing key is merged, and how the table is laid out (partition
and clustering columns, used by BigQuery; DuckDB and PostgreSQL index the key).

Merge modes:
* ``add``: the ``additive`` columns are summed with the stored row (mergeable KPI components:
  counts and sums from several micro-batches combine exactly);
* ``replace``: the new row replaces the stored one (dead letters, streaming panes);
* ``ignore``: the first row for a key is kept (de-duplication ledger).
"""
from __future__ import annotations

import dataclasses

LOGICAL_TYPES = ("STRING", "INT64", "FLOAT64", "BOOL", "TIMESTAMP", "BYTES")


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    doc: str = ""

    def __post_init__(self):
        if self.type not in LOGICAL_TYPES:
            raise ValueError(f"column {self.name}: unknown type {self.type}")


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    merge: str = "replace"
    additive: tuple[str, ...] = ()
    partition_by: str | None = None
    cluster_by: tuple[str, ...] = ()
    doc: str = ""

    def __post_init__(self):
        names = [c.name for c in self.columns]
        missing = [k for k in (*self.key, *self.additive, *self.cluster_by) if k not in names]
        if self.partition_by and self.partition_by not in names:
            missing.append(self.partition_by)
        if missing:
            raise ValueError(f"table {self.name}: unknown columns {missing}")
        if self.merge not in ("add", "replace", "ignore"):
            raise ValueError(f"table {self.name}: unknown merge mode {self.merge}")
        if self.merge == "add" and not self.additive:
            raise ValueError(f"table {self.name}: merge 'add' needs additive columns")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def combine(self, rows: list[dict]) -> list[dict]:
        """Rows with unique keys, merged the way the table merges: a bulk upsert with the same
        key twice in one statement is undefined (DuckDB silently keeps the first)."""
        if not rows:
            return []
        key = self.key
        merged: dict[tuple, dict] = {}
        for row in rows:
            k = tuple(row[c] for c in key)
            stored = merged.get(k)
            if stored is None:
                merged[k] = dict(row)
            elif self.merge == "add":
                for column in self.additive:
                    stored[column] = (stored[column] or 0) + (row[column] or 0)
            elif self.merge == "replace":
                merged[k] = dict(row)
        return list(merged.values())


def C(name: str, type_: str, doc: str = "", nullable: bool = True) -> Column:
    return Column(name, type_, nullable, doc)


WINDOW_COLUMNS = (
    C("window_start", "TIMESTAMP", "Window start (UTC, inclusive).", False),
    C("window_end", "TIMESTAMP", "Window end (UTC, exclusive).", False),
    C("window_seconds", "INT64", "Window length in seconds (3600 hourly, 86400 daily).", False),
)

EVENT_COUNTS = TableSpec(
    name="event_counts",
    columns=WINDOW_COLUMNS + (
        C("event_kind", "STRING", "social | web | survey.", False),
        C("topic", "STRING", "Source topic.", False),
        C("event_type", "STRING", "Event type (survey: the survey type).", False),
        C("brand", "STRING", "Brand, '(none)' if the event names none.", False),
        C("channel", "STRING", "social: platform; web: device; survey: answer channel.", False),
        C("events", "INT64", "Accepted, de-duplicated events.", False),
    ),
    key=("window_seconds", "window_start", "topic", "event_type", "brand", "channel"),
    merge="add",
    additive=("events",),
    partition_by="window_start",
    cluster_by=("event_kind", "brand", "channel"),
    doc="Windowed event counts per topic, event type, brand and channel.",
)

DEAD_LETTERS = TableSpec(
    name="dead_letters",
    columns=(
        C("dead_letter_id", "STRING", "'<topic>/<partition>/<offset>'.", False),
        C("topic", "STRING", nullable=False),
        C("partition", "INT64", nullable=False),
        C("offset", "INT64", nullable=False),
        C("kafka_timestamp", "TIMESTAMP"),
        C("key", "BYTES", "Original key bytes."),
        C("value", "BYTES", "Original value bytes."),
        C("stage", "STRING", "decode | validate | window | write.", False),
        C("reason", "STRING", "Machine-readable reason.", False),
        C("detail", "STRING", "Human-readable explanation.", False),
        C("schema_id", "INT64", "Writer schema id, if the header was read."),
        C("batch_id", "STRING", "Micro-batch that read it."),
        C("failed_at", "TIMESTAMP", "When it was rejected.", False),
    ),
    key=("dead_letter_id",),
    merge="replace",
    partition_by="failed_at",
    cluster_by=("topic", "reason"),
    doc="Every rejected record with its original bytes, origin, stage and reason.",
)

EVENT_IDS = TableSpec(
    name="_cx360_event_ids",
    columns=(
        C("event_id", "STRING", nullable=False),
        C("topic", "STRING", nullable=False),
        C("partition", "INT64", nullable=False),
        C("offset", "INT64", nullable=False),
        C("event_time", "TIMESTAMP", nullable=False),
    ),
    key=("event_id",),
    merge="ignore",
    partition_by="event_time",
    doc="First occurrence of every accepted event id: the de-duplication ledger.",
)

def _counts(*names_docs: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(C(name, "INT64", doc, False) for name, doc in names_docs)


SOCIAL_KPIS = TableSpec(
    name="social_kpis",
    columns=WINDOW_COLUMNS + (
        C("brand", "STRING", "Brand the events are about.", False),
        C("platform", "STRING", nullable=False),
        C("language", "STRING", "de | en | und (no text, or emoji only).", False),
    ) + _counts(
        ("mentions", "Posts, comments and mentions about the brand by non-brand authors."),
        ("ugc_posts", "Original posts (not comments) about the brand by non-brand authors."),
        ("inbound", "Mentions aimed at the brand (@mention, message, brand page)."),
        ("scored", "Mentions with text, scored for sentiment."),
        ("positive", "Scored mentions labelled positive."),
        ("neutral", "Scored mentions labelled neutral."),
        ("negative", "Scored mentions labelled negative."),
        ("brand_posts", "Posts by the brand's own accounts."),
        ("brand_replies", "Replies by the brand's own accounts."),
        ("brand_post_reach", "Sum of reach of the brand's own posts."),
        ("likes", "Likes of the brand's content."),
        ("shares", "Shares of the brand's content."),
        ("comments", "Comments on the brand's content by non-brand authors."),
    ) + (C("polarity_sum", "FLOAT64", "Sum of sentiment polarity of scored mentions.", False),),
    key=("window_seconds", "window_start", "brand", "platform", "language"),
    merge="add",
    additive=("mentions", "ugc_posts", "inbound", "scored", "positive", "neutral", "negative",
              "brand_posts", "brand_replies", "brand_post_reach", "likes", "shares", "comments",
              "polarity_sum"),
    partition_by="window_start",
    cluster_by=("brand", "platform"),
    doc="Social listening components per window, brand, platform and language.",
)

VOICE = TableSpec(
    name="share_of_voice_counts",
    columns=WINDOW_COLUMNS + (
        C("brand", "STRING", "A brand named in the text (own or competitor).", False),
        C("platform", "STRING", nullable=False),
        C("mentions", "INT64", "Non-brand posts, comments and mentions naming the brand.", False),
        C("reach", "INT64", "Sum of their reach (for the reach-weighted variant).", False),
    ),
    key=("window_seconds", "window_start", "brand", "platform"),
    merge="add",
    additive=("mentions", "reach"),
    partition_by="window_start",
    cluster_by=("brand",),
    doc="Mentions per named brand, for share of voice.",
)

ASPECTS = TableSpec(
    name="aspect_mentions",
    columns=WINDOW_COLUMNS + (
        C("source", "STRING", "social | survey.", False),
        C("brand", "STRING", nullable=False),
        C("aspect", "STRING", "CX aspect: delivery, price, quality, service, app, ...", False),
        C("label", "STRING", "Sentiment label of the text.", False),
        C("mentions", "INT64", nullable=False),
    ),
    key=("window_seconds", "window_start", "source", "brand", "aspect", "label"),
    merge="add",
    additive=("mentions",),
    partition_by="window_start",
    cluster_by=("brand", "aspect"),
    doc="Texts mentioning each CX aspect, by sentiment label.",
)

SURVEY_KPIS = TableSpec(
    name="survey_kpis",
    columns=WINDOW_COLUMNS + (
        C("brand", "STRING", nullable=False),
        C("survey_type", "STRING", "NPS | CSAT | CES.", False),
        C("touchpoint", "STRING", nullable=False),
        C("channel", "STRING", nullable=False),
        C("language", "STRING", "Questionnaire language, '(unknown)' if not given.", False),
    ) + _counts(
        ("responses", "Answers."),
        ("score_sum", "Sum of scores."),
        ("promoters", "NPS 9-10."),
        ("passives", "NPS 7-8."),
        ("detractors", "NPS 0-6."),
        ("top2", "CSAT 4-5 (top-2 box)."),
        ("agree", "CES 5-7 (agrees it was easy)."),
        ("comments", "Answers with free text."),
        ("comment_positive", "Free texts labelled positive."),
        ("comment_negative", "Free texts labelled negative."),
    ) + (C("comment_polarity_sum", "FLOAT64", "Sum of free-text polarity.", False),),
    key=("window_seconds", "window_start", "brand", "survey_type", "touchpoint", "channel",
         "language"),
    merge="add",
    additive=("responses", "score_sum", "promoters", "passives", "detractors", "top2", "agree",
              "comments", "comment_positive", "comment_negative", "comment_polarity_sum"),
    partition_by="window_start",
    cluster_by=("brand", "survey_type"),
    doc="Survey components per window and dimensions: NPS, CSAT, CES and free-text sentiment.",
)

INBOUND_POSTS = TableSpec(
    name="inbound_posts",
    columns=(
        C("platform", "STRING", nullable=False),
        C("post_id", "STRING", nullable=False),
        C("event_id", "STRING", nullable=False),
        C("brand", "STRING", nullable=False),
        C("event_type", "STRING", "post | comment | mention.", False),
        C("inbound_time", "TIMESTAMP", nullable=False),
        C("language", "STRING", nullable=False),
        C("polarity", "FLOAT64", nullable=False),
        C("label", "STRING", nullable=False),
        C("aspects", "STRING", "Comma-separated CX aspects."),
    ),
    key=("platform", "post_id"),
    merge="ignore",
    partition_by="inbound_time",
    cluster_by=("brand", "platform"),
    doc="Posts aimed at a brand by customers: the base of response time and rate.",
)

BRAND_REPLIES = TableSpec(
    name="brand_replies",
    columns=(
        C("event_id", "STRING", nullable=False),
        C("platform", "STRING", nullable=False),
        C("parent_post_id", "STRING", "The post replied to.", False),
        C("brand", "STRING", nullable=False),
        C("reply_time", "TIMESTAMP", nullable=False),
    ),
    key=("event_id",),
    merge="ignore",
    partition_by="reply_time",
    cluster_by=("brand", "platform"),
    doc="Replies by brand accounts; the first one per post answers it.",
)

WEB_EVENTS = TableSpec(
    name="web_events",
    columns=(
        C("event_id", "STRING", nullable=False),
        C("brand", "STRING", nullable=False),
        C("event_time", "TIMESTAMP", nullable=False),
        C("event_type", "STRING", nullable=False),
        C("session_id", "STRING", nullable=False),
        C("cookie_id", "STRING", nullable=False),
        C("account_id", "STRING"),
        C("page_type", "STRING"),
        C("product_id", "STRING"),
        C("referrer", "STRING"),
        C("utm_source", "STRING"),
        C("utm_medium", "STRING"),
        C("utm_campaign", "STRING"),
        C("order_id", "STRING"),
        C("order_value", "FLOAT64"),
        C("currency", "STRING"),
        C("device", "STRING"),
    ),
    key=("event_id",),
    merge="ignore",
    partition_by="event_time",
    cluster_by=("brand", "cookie_id"),
    doc="Web tracking events (no e-mail): sessions are derived from them in views, exactly, "
        "whichever micro-batch each event arrived in.",
)

BRANDS = TableSpec(
    name="brands",
    columns=(
        C("brand", "STRING", nullable=False),
        C("industry", "STRING", "Competitive set for share of voice.", False),
        C("own", "BOOL", "One of the company's own brands.", False),
    ),
    key=("brand",),
    merge="replace",
    doc="Brand dimension: which brands compete (share of voice) and which are our own.",
)

KPI_TABLES = (SOCIAL_KPIS, VOICE, ASPECTS, SURVEY_KPIS, INBOUND_POSTS, BRAND_REPLIES, WEB_EVENTS,
              BRANDS)
TABLES = {spec.name: spec for spec in (EVENT_COUNTS, DEAD_LETTERS, EVENT_IDS, *KPI_TABLES)}
