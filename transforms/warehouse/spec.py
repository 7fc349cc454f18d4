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
import operator

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
        key_of = operator.itemgetter(*self.key)
        merged: dict = {}
        for row in rows:
            k = key_of(row)
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
        C("resolution", "STRING", "NULL while dead; 'replayed' once a replay accepted it."),
        C("replayed_at", "TIMESTAMP", "When `cx360 replay-dead-letters` accepted it."),
        C("replay_batch_id", "STRING", "Replay batch that accepted it."),
        C("key_sha256", "STRING", "SHA-256 of the key when the key was withheld (it matched "
          "an e-mail/phone pattern); the dead-letter topic keeps the original bytes."),
        C("value_sha256", "STRING", "SHA-256 of the value when the value was withheld."),
        C("value_redacted", "STRING", "The withheld value with e-mails/phones masked."),
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

def sliding_spec(spec: TableSpec) -> TableSpec:
    """The sliding-window twin of a fixed-window component table: the same columns plus
    ``window_period_seconds`` in the key. A separate table, so no query over the fixed windows
    can mix in overlapping sliding windows (whose sums would count an event several times)."""
    period = C("window_period_seconds", "INT64",
               "How often a window starts (the slide): windows of window_seconds every "
               "window_period_seconds, each event in window_seconds / window_period_seconds "
               "of them.", False)
    return dataclasses.replace(
        spec, name=f"{spec.name}_sliding",
        columns=spec.columns[:len(WINDOW_COLUMNS)] + (period,) + spec.columns[len(WINDOW_COLUMNS):],
        key=("window_seconds", "window_period_seconds") + spec.key[1:],
        doc=spec.doc + " Sliding windows (`cx360 run --sliding`).")


SOCIAL_KPIS_SLIDING = sliding_spec(SOCIAL_KPIS)
SURVEY_KPIS_SLIDING = sliding_spec(SURVEY_KPIS)

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
              BRANDS, SOCIAL_KPIS_SLIDING, SURVEY_KPIS_SLIDING)
PIPELINE_HEALTH = TableSpec(
    name="pipeline_health",
    columns=(
        C("batch_id", "STRING", "Micro-batch (or replay batch) the row describes.", False),
        C("topic", "STRING", nullable=False),
        C("partition", "INT64", nullable=False),
        C("recorded_at", "TIMESTAMP", "When the row was measured (after the batch).", False),
        C("records_in", "INT64", "Offsets the batch read from this partition.", False),
        C("accepted", "INT64", "Records accepted (records_in - dead_letters).", False),
        C("dead_letters", "INT64", "Records dead-lettered.", False),
        C("dead_letters_by_reason", "STRING", "JSON object reason -> count."),
        C("position", "INT64", "End of the offsets the warehouse holds."),
        C("high_watermark", "INT64", "Fetch high watermark measured after the batch."),
        C("lag", "INT64", "high_watermark - position."),
        C("max_event_time", "TIMESTAMP", "Newest event_time in the warehouse (watermark proxy)."),
        C("freshness_s", "FLOAT64", "recorded_at - max_event_time, in seconds."),
        C("batch_seconds", "FLOAT64", "Duration of the batch's Beam job."),
        C("records_per_s", "FLOAT64", "Records of the whole batch per second."),
    ),
    key=("batch_id", "topic", "partition"),
    merge="replace",
    partition_by="recorded_at",
    cluster_by=("topic",),
    doc="Health per batch and topic-partition: volume, dead letters, lag, freshness, rate.",
)

IDENTITY_LINKS = TableSpec(
    name="identity_links",
    columns=(
        C("id_a", "STRING", "Typed identifier (acct:, ck:, em:<hmac>, ph:<hmac>, sh:).", False),
        C("id_b", "STRING", "The other identifier (id_a < id_b).", False),
        C("first_seen", "TIMESTAMP", "Event time of the first event carrying both.", False),
        C("event_id", "STRING", "That event (the smallest id among equal times).", False),
        C("batch_id", "STRING", "Micro-batch that recorded the link."),
    ),
    key=("id_a", "id_b"),
    # replace: stitching rewrites a link only when a batch saw it earlier (a late event), so
    # the row is the earliest sighting whatever the batch boundaries were.
    merge="replace",
    cluster_by=("id_a",),
    doc="Edges of the identity graph: two identifiers seen on one event.",
)

IDENTITY_MAP = TableSpec(
    name="identity_map",
    columns=(
        C("identifier", "STRING", nullable=False),
        C("id_type", "STRING", "acct | ck | em | ph | sh.", False),
        C("customer_key", "STRING", "Stable key of the identifier's component.", False),
        C("shared", "BOOL", "Linked to several accounts (a shared device): links nothing."),
        C("batch_id", "STRING", "Micro-batch that last changed the row."),
        C("updated_at", "TIMESTAMP", "That batch's clock."),
    ),
    key=("identifier",),
    merge="replace",
    cluster_by=("customer_key",),
    doc="Current customer key of every linked identifier (docs/identity.md: unlinked ones).",
)

IDENTITY_MERGES = TableSpec(
    name="identity_merges",
    columns=(
        C("batch_id", "STRING", nullable=False),
        C("from_key", "STRING", "Key the identifiers had.", False),
        C("to_key", "STRING", "Key they have now.", False),
        C("kind", "STRING", "merge | split.", False),
        C("identifiers", "INT64", "Identifiers that moved.", False),
        C("merged_at", "TIMESTAMP", "The batch's clock.", False),
    ),
    key=("batch_id", "from_key", "to_key"),
    merge="ignore",
    doc="Every change of customer key: the audit trail of merges and splits.",
)

CUSTOMER_TOUCHPOINTS = TableSpec(
    name="customer_touchpoints",
    columns=(
        C("event_id", "STRING", nullable=False),
        C("identifier", "STRING", "Strongest identifier of the event (pseudonymised).", False),
        C("channel", "STRING", "social | web | survey.", False),
        C("touchpoint", "STRING", "platform:event_type | web:event_type | survey:touchpoint.",
          False),
        C("event_time", "TIMESTAMP", nullable=False),
        C("brand", "STRING", nullable=False),
        C("polarity", "FLOAT64", "Sentiment of the text, if any."),
        C("label", "STRING", "Sentiment label of the text, if any."),
        C("aimed_at_brand", "BOOL"),
        C("order_id", "STRING"),
        C("order_value", "FLOAT64"),
        C("survey_type", "STRING"),
        C("score", "INT64"),
    ),
    key=("event_id",),
    merge="ignore",
    partition_by="event_time",
    cluster_by=("identifier",),
    doc="One fact per customer event keyed by identifier; profiles join it with identity_map.",
)

ERASURES = TableSpec(
    name="erasures",
    columns=(
        C("identifier", "STRING", "Erased (pseudonymised) identifier.", False),
        C("customer_key", "STRING", "Key of the erased customer.", False),
        C("erased_at", "TIMESTAMP", nullable=False),
    ),
    key=("identifier",),
    merge="ignore",
    doc="Identifiers erased by `cx360 forget`: never stored again.",
)

IDENTITY_TABLES = (IDENTITY_LINKS, IDENTITY_MAP, IDENTITY_MERGES, CUSTOMER_TOUCHPOINTS, ERASURES)

TABLES = {spec.name: spec for spec in (EVENT_COUNTS, DEAD_LETTERS, EVENT_IDS, *KPI_TABLES,
                                       PIPELINE_HEALTH, *IDENTITY_TABLES)}
