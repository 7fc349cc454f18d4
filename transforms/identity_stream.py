"""Identity stitching in the production streaming job (Dataflow, Flink); pure logic in
transforms/identity.py, the state design in docs/identity.md ("Production streaming").

* :class:`DropErasedStreamFn` drops events carrying an identifier erased by ``cx360 forget``
  (the streaming job applies it to every event right after de-duplication). The erasure
  list is re-read from the warehouse every ``refresh_s`` seconds per worker (a streaming job
  never restarts, so a list read once would never learn of new erasures).
* :func:`stream_touchpoint` turns each event into its ``customer_touchpoints`` fact (the
  same rows as micro-batch mode) with the sentiment score the KPI branch computed for it (a
  text is scored once per job), written by the replace-upsert sink: keyed by event id and
  deterministic, so a retried bundle rewrites the same row.
* :class:`StitchStreamFn` is a stateful DoFn on ONE key (the whole graph): links are buffered
  in ``BagState``; an event-time timer at the end of the link's flush interval
  (``interval_s``, default 60 s) stitches the buffer with :func:`stitch` against the graph
  stored in the warehouse and writes ``identity_links``, ``identity_merges`` and
  ``identity_map`` before the timer completes. A runner processes one key on one worker at a
  time, so the read-compute-write of one flush never overlaps another: the same serialisation
  micro-batch mode gets from its one GroupByKey. A retried flush (the write happened, the
  state commit did not) recomputes against a graph that already holds its rows and emits
  nothing new or the same rows (upserts, idempotent), so at-least-once execution leaves the
  graph exact. The result does not depend on how links are cut into flushes or on their
  arrival order (tests/test_identity.py checks that property of :func:`stitch`).
"""
from __future__ import annotations

import time
from typing import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec,
                                              TimerSpec, on_timer)
from apache_beam.utils.timestamp import Timestamp

from cx360.transforms.identity import (IdentityRules, WarehouseGraphStore, event_links,
                                       is_erased, stitch, touchpoint_row)
from cx360.transforms.identity_steps import rules_from_env
from cx360.transforms.warehouse.spec import CUSTOMER_TOUCHPOINTS, IDENTITY_TABLES

#: The order a flush writes its tables in: merges before the map, so that a flush that fails
#: between two writes and is retried still records its merges (computed from the old map).
WRITE_ORDER = ("identity_links", "identity_merges", "identity_map")
GRAPH_KEY = "graph"


def _warehouse(url: str):
    from cx360.transforms.warehouse.panes import prepare, shared_warehouse

    warehouse = shared_warehouse(url, CUSTOMER_TOUCHPOINTS.name)
    prepare(warehouse, IDENTITY_TABLES)
    return warehouse


class _ErasureList:
    """The erased identifiers, re-read at most every ``refresh_s`` seconds."""

    def __init__(self, warehouse, refresh_s: float):
        self.warehouse = warehouse
        self.refresh_s = refresh_s
        self._read_at = -float("inf")
        self._erased: set[str] = set()

    def get(self) -> set[str]:
        if time.monotonic() - self._read_at >= self.refresh_s:
            self._erased = WarehouseGraphStore(self.warehouse).erased()
            self._read_at = time.monotonic()
        return self._erased


class DropErasedStreamFn(beam.DoFn):
    def __init__(self, warehouse_url: str, refresh_s: float = 60.0):
        self.warehouse_url = warehouse_url
        self.refresh_s = refresh_s

    def setup(self):
        self._erasures = _ErasureList(_warehouse(self.warehouse_url), self.refresh_s)
        self._dropped = Metrics.counter("cx360.identity", "erased_events_dropped")

    def process(self, event: dict) -> Iterator[dict]:
        if is_erased(event, self._erasures.get()):
            self._dropped.inc()
            return
        yield event


def stream_touchpoint(scored: tuple[dict, dict | None]) -> list[dict]:
    """``(event, its sentiment score)`` -> its ``customer_touchpoints`` row, if it has a
    customer identifier."""
    row = touchpoint_row(*scored)
    return [row] if row is not None else []


class StitchStreamFn(beam.DoFn):
    """(GRAPH_KEY, link row) in; writes the identity tables at each flush; out: (flush id,
    table, rows written) per flush and table, for metrics and tests."""

    LINKS = BagStateSpec("links", beam.coders.PickleCoder())
    NEXT_FLUSH = ReadModifyWriteStateSpec("next_flush", beam.coders.VarIntCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, warehouse_url: str, interval_s: int = 60,
                 rules: IdentityRules | None = None):
        self.warehouse_url = warehouse_url
        self.interval_ms = int(interval_s * 1000)
        self.rules = rules

    def setup(self):
        self._warehouse = _warehouse(self.warehouse_url)
        self._rules = self.rules or rules_from_env()

    def process(self, element: tuple[str, dict], timestamp=beam.DoFn.TimestampParam,
                links=beam.DoFn.StateParam(LINKS),
                next_flush=beam.DoFn.StateParam(NEXT_FLUSH),
                flush=beam.DoFn.TimerParam(FLUSH)) -> Iterator:
        links.add(element[1])
        ms = int(timestamp.micros // 1000)
        due = (ms // self.interval_ms + 1) * self.interval_ms   # end of the link's interval
        pending = next_flush.read()
        if pending is None or due < pending:
            next_flush.write(due)
            flush.set(Timestamp(micros=due * 1000))
        return iter(())

    @on_timer(FLUSH)
    def on_flush(self, fired=beam.DoFn.TimestampParam,
                 links=beam.DoFn.StateParam(LINKS),
                 next_flush=beam.DoFn.StateParam(NEXT_FLUSH)) -> Iterator:
        from cx360.transforms.warehouse.panes import upsert
        from cx360.transforms.warehouse.spec import TABLES

        buffered = list(links.read())
        links.clear()
        next_flush.clear()
        if not buffered:
            return
        flush_ms = int(fired.micros // 1000)
        store = WarehouseGraphStore(self._warehouse)
        # The batch id names the flush (deterministic: a retried flush writes the same rows).
        rows = stitch(buffered, store, self._rules, store.erased(), f"stream-{flush_ms}",
                      flush_ms)
        for table in WRITE_ORDER:
            table_rows = rows.get(table) or []
            if table_rows:
                upsert(self._warehouse, TABLES[table], table_rows, "replace")
                Metrics.counter("cx360.identity", f"rows:{table}").inc(len(table_rows))
            yield f"stream-{flush_ms}", table, len(table_rows)


class StreamIdentities(beam.PTransform):
    """Unique, timestamped ``(event, sentiment score)`` pairs (the KPI branch's ``scored``,
    erased customers already dropped by :class:`DropErasedStreamFn`) ->
    ``customer_touchpoints`` rows out (``touchpoints``) and the identity tables written by the
    stitching step (``stitched``: (flush id, table, rows written) per flush and table;
    it also ignores links to identifiers erased meanwhile)."""

    def __init__(self, warehouse_url: str, interval_s: int = 60,
                 rules: IdentityRules | None = None):
        super().__init__()
        self.warehouse_url = warehouse_url
        self.interval_s = interval_s
        self.rules = rules

    def expand(self, scored):
        touchpoints = scored | "Touchpoints" >> beam.FlatMap(stream_touchpoint)
        stitched = (scored
                    | "Links" >> beam.FlatMap(lambda pair: [(GRAPH_KEY, link)
                                                            for link in event_links(pair[0])])
                    | "Stitch" >> beam.ParDo(StitchStreamFn(
                        self.warehouse_url, self.interval_s, self.rules)))
        return {"touchpoints": touchpoints, "stitched": stitched}
