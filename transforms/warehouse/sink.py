"""Beam sink for micro-batch mode: every row a batch produces, written in one transaction."""
from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from cx360.transforms.decode import pack_events, unpack_events
from cx360.transforms.warehouse.spec import TABLES


class WriteBatchFn(beam.DoFn):
    """Receives ``(key, [(table, rows), ...])`` — all of one batch — and writes it with the
    batch ledger in one transaction (see warehouse.base). Emits {table: rows written}."""

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
        written = self._warehouse.write_batch(self.batch_id, rows, TABLES)
        if written is None:
            Metrics.counter("cx360.write", "batches_already_applied").inc()
            return
        for table, count in written.items():
            Metrics.counter("cx360.write", f"rows_written:{table}").inc(count)
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
