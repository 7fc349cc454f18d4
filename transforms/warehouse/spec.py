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

TABLES = {spec.name: spec for spec in (EVENT_COUNTS, DEAD_LETTERS, EVENT_IDS)}
