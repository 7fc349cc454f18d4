"""The warehouse interface every backend implements, and the micro-batch ledger it keeps.

Exactly-once effect in micro-batch mode rests on three rules:
1. a batch's offset ranges are recorded (``record_batch``) before it is processed;
2. everything the batch produces is written in ONE transaction together with the batch's
   status 'applied' (``write_batch``), so a batch is in the warehouse entirely or not at all,
   and a re-run of an applied batch writes nothing;
3. offsets are committed to Kafka only after that transaction; a restart first re-runs any
   batch still 'pending', with exactly its recorded ranges and clock.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Iterable, Sequence

from cx360.transforms.kafka_io import PartitionRange
from cx360.transforms.warehouse.spec import TableSpec


class WarehouseError(Exception):
    """A warehouse URL or connection problem a user can fix."""


@dataclasses.dataclass
class Batch:
    batch_id: str
    created_ms: int
    status: str  # pending | applied | committed
    ranges: list[PartitionRange]


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of half-open intervals."""
    merged: list[list[int]] = []
    for start, stop in sorted(intervals):
        if stop <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(a, b) for a, b in merged]


def subtract_intervals(start: int, stop: int, taken: Sequence[tuple[int, int]]
                       ) -> list[tuple[int, int]]:
    """Parts of ``[start, stop)`` not covered by the (merged) ``taken`` intervals."""
    parts, cursor = [], start
    for a, b in taken:
        if b <= cursor:
            continue
        if a >= stop:
            break
        if a > cursor:
            parts.append((cursor, min(a, stop)))
        cursor = max(cursor, b)
        if cursor >= stop:
            break
    if cursor < stop:
        parts.append((cursor, stop))
    return parts


class Warehouse(ABC):
    url: str

    @abstractmethod
    def ensure_tables(self, specs: Iterable[TableSpec]) -> None:
        """Create missing tables (and add missing NULLABLE columns)."""

    def ensure_views(self) -> None:
        """(Re)create the KPI views; backends without views leave this empty."""

    @abstractmethod
    def write_batch(self, batch_id: str, rows: dict[str, list[dict]],
                    specs: dict[str, TableSpec]) -> dict[str, int] | None:
        """Upsert every table's rows and mark the batch applied, in one transaction. Returns
        rows written per table, or None if the batch had been applied already."""

    @abstractmethod
    def seen_event_ids(self, event_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """For ids already in the de-duplication ledger: (topic, partition, offset) of their
        first occurrence."""

    @abstractmethod
    def record_batch(self, batch: Batch) -> None:
        """Record a batch as pending with its ranges (before it is processed)."""

    @abstractmethod
    def batches(self, status: str | None = None) -> list[Batch]:
        """Recorded batches (optionally of one status), oldest first."""

    @abstractmethod
    def set_batch_status(self, batch_id: str, status: str) -> None:
        ...

    @abstractmethod
    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run a read-only query (backend SQL dialect)."""

    def query_records(self, sql: str, params: Sequence = ()) -> list[dict]:
        """Like ``query`` but each row as a dict keyed by column name (in select order)."""
        raise NotImplementedError

    def quote(self, name: str) -> str:
        """``name`` quoted as an identifier in this backend's SQL (``partition`` and ``offset``
        are column names and reserved words)."""
        return '"' + name.replace('"', '""') + '"'

    def epoch_ms_sql(self, column: str) -> str:
        """SQL for a TIMESTAMP column as epoch milliseconds (BIGINT) in this dialect."""
        return f"epoch_ms({column})"

    def bytes_contain(self, column: str, needle: str) -> tuple[str, list]:
        """(SQL condition with ``?`` placeholders, its parameters): the BYTES ``column``
        contains the UTF-8 bytes of ``needle``, ASCII letters in any case (an Avro or JSON
        event naming an account, cookie or handle). DuckDB: the blob as text (bytes outside
        printable ASCII as ``\\xNN``) and the needle escaped the same way."""
        return (f"strpos(lower(CAST({column} AS VARCHAR)), "
                "lower(CAST(CAST(? AS BLOB) AS VARCHAR))) > 0", [needle.encode()])

    def has_table(self, name: str) -> bool:
        """Whether the table exists (the streaming-only tables exist only where ``cx360
        stream`` wrote)."""
        return bool(self.query("SELECT count(*) FROM information_schema.tables "
                               "WHERE table_name = ?", [name])[0][0])

    @abstractmethod
    def close(self) -> None:
        ...

    def select_where_in(self, table: str, column: str, values: Sequence[str],
                        columns: Sequence[str], where: str = "TRUE") -> list[tuple]:
        """``columns`` of the rows of ``table`` whose ``column`` is one of ``values`` (and that
        match the SQL condition ``where``). Backends override this with a bulk join; this
        fallback sends IN lists of 500 parameters."""
        out: list[tuple] = []
        cols = ", ".join(columns)
        values = sorted(set(values))
        for i in range(0, len(values), 500):
            chunk = values[i:i + 500]
            marks = ", ".join("%s" if self.paramstyle == "format" else "?" for _ in chunk)
            out += self.query(f"SELECT {cols} FROM {table} WHERE ({where}) AND {column} IN "
                              f"({marks})", chunk)
        return out

    paramstyle = "qmark"

    def execute_transaction(self, statements: Sequence[tuple[str, Sequence]]) -> list[int]:
        """Run DML ``statements`` (``(sql, params)`` with ``?`` placeholders, in SQL every
        backend accepts) in ONE transaction: all or nothing. Returns the number of rows each
        statement affected. Used by ``cx360 forget``."""
        raise WarehouseError(f"{type(self).__name__} cannot run a transaction of statements")

    def claimed_intervals(self) -> dict[tuple[str, int], list[tuple[int, int]]]:
        """Merged offset intervals of every recorded batch, per (topic, partition): those in
        the warehouse and those pending (which are re-run before anything new is planned, so
        no new batch may take their offsets)."""
        spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for batch in self.batches():
            if batch.status in ("pending", "applied", "committed"):
                for r in batch.ranges:
                    spans.setdefault((r.topic, r.partition), []).append((r.start, r.stop))
        return {tp: merge_intervals(iv) for tp, iv in spans.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
