"""Beam sink for micro-batch mode: every row a batch produces, written in one transaction."""
from __future__ import annotations

import inspect
import time
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from cx360.transforms.decode import pack_events, unpack_events
from cx360.transforms.warehouse.spec import TABLES


def write_rows(warehouse, batch_id: str, rows) -> tuple[dict | None, dict[str, int]]:
    """``warehouse.write_batch`` of one batch's rows, with rows the warehouse refuses one by
    one (BigQuery) turned into dead letters of the same batch. Returns (rows written per table
    or None when the batch was applied already, rows rejected per table). Used by
    :class:`WriteBatchFn` and the local parallel mode (pipelines/parallel.py)."""
    rejected_counts: dict[str, int] = {}
    kwargs = {}
    if "on_rejected" in inspect.signature(warehouse.write_batch).parameters:
        # BigQuery refuses single rows (a value its column type cannot hold, a missing
        # REQUIRED field) where the SQL backends fail the whole transaction. Those rows
        # become dead letters in the same transaction: stage 'write', BigQuery's message
        # as the detail, the row as JSON in value.
        from cx360.transforms.warehouse.bigquery_backend import rejected_to_dead_letters

        def on_rejected(rejected):
            rejected_counts.clear()
            for r in rejected:
                rejected_counts[r.table] = rejected_counts.get(r.table, 0) + 1
            return {"dead_letters": rejected_to_dead_letters(
                rejected, batch_id, failed_at_ms=int(time.time() * 1000))}

        kwargs["on_rejected"] = on_rejected
    written = warehouse.write_batch(batch_id, rows, TABLES, **kwargs)
    return written, rejected_counts


class WriteBatchFn(beam.DoFn):
    """Receives ``(key, [(table, rows), ...])`` — all of one batch — and writes it with the
    batch ledger in one transaction (see warehouse.base). Emits {table: rows written}.

    Rows the warehouse refuses one by one (BigQuery) are written as dead letters of the same
    batch and counted as ``cx360.write/rows_rejected:<table>``; ``rows_written`` then counts the
    accepted rows and ``rows_written:dead_letters`` includes those dead letters, so per table
    rows produced = rows written + rows rejected."""

    def __init__(self, warehouse_url: str, batch_id: str, tables: Iterable[str]):
        self.warehouse_url = warehouse_url
        self.batch_id = batch_id
        self.tables = list(tables)
        self._warehouse = None

    def setup(self):
        from cx360.transforms.warehouse import open_warehouse

        self._warehouse = open_warehouse(self.warehouse_url)
        self._warehouse.ensure_tables(TABLES[name] for name in self.tables)

    def teardown(self):
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None

    def process(self, element: tuple[str, Iterable[tuple[str, list[dict]]]]) -> Iterator[dict]:
        rows: dict[str, list[dict]] = {name: [] for name in self.tables}
        for table, packed in element[1]:
            rows[table].extend(unpack_events([packed]))
        written, rejected_counts = write_rows(self._warehouse, self.batch_id, rows)
        if written is None:
            Metrics.counter("cx360.write", "batches_already_applied").inc()
            return
        for table, count in written.items():
            Metrics.counter("cx360.write", f"rows_written:{table}").inc(count)
        for table, count in rejected_counts.items():
            Metrics.counter("cx360.write", f"rows_rejected:{table}").inc(count)
        yield written


class WriteMicroBatch(beam.PTransform):
    """PCollection of (table name, [rows]) -> one transactional write of the whole batch."""

    def __init__(self, warehouse_url: str, batch_id: str, tables: Iterable[str]):
        super().__init__()
        self.warehouse_url = warehouse_url
        self.batch_id = batch_id
        self.tables = list(tables)

    def expand(self, table_rows):
        # An empty part makes sure the batch is marked applied even if it produced no row.
        empty = table_rows.pipeline | "EmptyPart" >> beam.Create([(self.tables[0], [])])
        return ((table_rows, empty)
                | "AllParts" >> beam.Flatten()
                # Rows travel to the writer as one pickled value per part: Beam's generic
                # coder would encode every row dict field by field (seconds per 100k rows).
                | "ToOneWriter" >> beam.Map(lambda part: ("batch", (part[0],
                                                                    pack_events(part[1]))))
                | "CollectBatch" >> beam.GroupByKey()
                | "WriteTransaction" >> beam.ParDo(WriteBatchFn(
                    self.warehouse_url, self.batch_id, self.tables)))
