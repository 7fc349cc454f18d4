"""Beam steps of identity stitching in micro-batch mode (pure logic: transforms/identity.py).

* :class:`DropErasedFn` drops events that carry an identifier erased by ``cx360 forget``
  (their ids are still in the de-duplication ledger, so a replay stays exact).
* :class:`StitchIdentities` routes every link of the batch to ONE DoFn (GroupByKey on a
  constant key: a micro-batch's links are few), which loads the affected part of the graph
  and the erasure list from the warehouse as it was before the batch, recomputes the touched
  components and emits ``identity_links``, ``identity_map`` and ``identity_merges`` parts.
  Deterministic given that state, so a re-run of a pending batch writes the same rows.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from cx360.transforms.decode import pack_events, unpack_events
from cx360.transforms.identity import (IdentityRules, WarehouseGraphStore, event_links,
                                       is_erased, stitch, touchpoint_row)
from cx360.transforms.kpis import score_event

RULES_ENV = "CX360_IDENTITY_MAX_ACCOUNTS"


def rules_from_env() -> IdentityRules:
    value = os.environ.get(RULES_ENV)
    return IdentityRules(int(value)) if value else IdentityRules()


def touchpoint_rows(events: Iterable[dict], scorer) -> list[dict]:
    """Touchpoint facts of events with a customer identifier, with the sentiment of the same
    texts the KPIs score (:func:`score_event`; the scorer caches texts, so the KPI step's
    scoring of the same text is not repeated)."""
    rows = []
    for event in events:
        row = touchpoint_row(event, score_event(event, scorer))
        if row is not None:
            rows.append(row)
    return rows


class _WarehouseDoFn(beam.DoFn):
    def __init__(self, warehouse_url: str):
        self.warehouse_url = warehouse_url
        self._warehouse = None

    def setup(self):
        from cx360.transforms.warehouse import open_warehouse
        from cx360.transforms.warehouse.spec import IDENTITY_TABLES

        self._warehouse = open_warehouse(self.warehouse_url)
        self._warehouse.ensure_tables(IDENTITY_TABLES)

    def teardown(self):
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None


class DropErasedFn(_WarehouseDoFn):
    """List of events -> the same list without events of erased identifiers."""

    def setup(self):
        super().setup()
        self._erased = WarehouseGraphStore(self._warehouse).erased()
        self._dropped = Metrics.counter("cx360.identity", "erased_events_dropped")

    def process(self, events: list[dict]) -> Iterator[list[dict]]:
        if not self._erased:
            yield events
            return
        kept = [e for e in events if not is_erased(e, self._erased)]
        if len(kept) != len(events):
            self._dropped.inc(len(events) - len(kept))
        yield kept


class StitchIdentitiesFn(_WarehouseDoFn):
    def __init__(self, warehouse_url: str, batch_id: str, now_ms: int, rules: IdentityRules):
        super().__init__(warehouse_url)
        self.batch_id = batch_id
        self.now_ms = now_ms
        self.rules = rules

    def process(self, element: tuple[str, Iterable[list[dict]]]) -> Iterator:
        links = unpack_events(element[1])
        store = WarehouseGraphStore(self._warehouse)
        rows = stitch(links, store, self.rules, store.erased(), self.batch_id, self.now_ms)
        for table, table_rows in rows.items():
            if table_rows:
                Metrics.counter("cx360.identity", f"rows:{table}").inc(len(table_rows))
                yield table, table_rows


class StitchIdentities(beam.PTransform):
    """Lists of unique events -> ``(table, rows)`` parts of the identity tables."""

    def __init__(self, warehouse_url: str, batch_id: str, now_ms: int,
                 rules: IdentityRules | None = None):
        super().__init__()
        self.fn = StitchIdentitiesFn(warehouse_url, batch_id, now_ms, rules or rules_from_env())

    def expand(self, events):
        return (events
                | "Links" >> beam.Map(
                    lambda evs: ("graph", pack_events(
                        [link for e in evs for link in event_links(e)])))
                | "OneGraphStep" >> beam.GroupByKey()
                | "Stitch" >> beam.ParDo(self.fn))
