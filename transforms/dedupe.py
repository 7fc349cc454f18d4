"""De-duplication by event id: a re-sent event (producer retry, upstream replay) counts once.

Events arrive grouped into buckets by a stable hash of their id, so every copy of one id meets
in the same bucket. Within a bucket the earliest copy by (topic, partition, offset) wins;
across micro-batches the warehouse's ledger of first occurrences decides. Both rules give the
same answer on a re-run of a batch, which exactly-once recovery needs.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from cx360.transforms.decode import unpack_events

EVENT_ID_ROWS = "event_ids"


def location(event: dict) -> tuple[str, int, int]:
    return event["_topic"], event["_partition"], event["_offset"]


def first_occurrences(events: Iterable[dict], seen: dict[str, tuple[str, int, int]]
                      ) -> tuple[list[dict], list[dict]]:
    """(unique events, duplicates). ``seen`` maps ids already in the ledger to the location of
    their first occurrence; an event at exactly that location is the original itself (a re-run
    of the batch that recorded it)."""
    best: dict[str, dict] = {}
    duplicates: list[dict] = []
    for event in events:
        event_id = event["event_id"]
        first = seen.get(event_id)
        if first is not None and first != location(event):
            duplicates.append(event)
            continue
        current = best.get(event_id)
        if current is None:
            best[event_id] = event
        elif location(event) < location(current):
            duplicates.append(current)
            best[event_id] = event
        else:
            duplicates.append(event)
    unique = sorted(best.values(), key=location)
    return unique, duplicates


class DeduplicateFn(beam.DoFn):
    """(bucket, iterable of packed event lists) -> list of unique events per bucket; the new
    ids' ledger rows go to the ``event_ids`` output.

    The ledger is looked up once per bundle (or per ``max_pending`` events), not once per
    bucket: a bundle usually holds many buckets, and on BigQuery every look-up is a query job
    of a second or more. Buckets are independent, so deciding them together gives the same
    answer as one by one."""

    #: Events held before the ledger is asked about them (bounds a bundle's memory).
    max_pending = 50_000

    def __init__(self, warehouse_url: str):
        self.warehouse_url = warehouse_url
        self._warehouse = None
        self._dup_counters = {}
        self._pending: list[list[dict]] = []
        self._pending_events = 0

    def setup(self):
        from cx360.transforms.warehouse import open_warehouse

        self._warehouse = open_warehouse(self.warehouse_url)

    def teardown(self):
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None

    def start_bundle(self):
        self._pending, self._pending_events = [], 0

    def process(self, element: tuple[int, Iterable[list[dict]]]) -> Iterator:
        _, groups = element
        events = unpack_events(groups)
        self._pending.append(events)
        self._pending_events += len(events)
        if self._pending_events >= self.max_pending:
            yield from self._decide()

    def finish_bundle(self) -> Iterator:
        for output in self._decide():
            if isinstance(output, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
            else:
                yield GlobalWindows.windowed_value(output)

    def _decide(self) -> Iterator:
        """The pending buckets' unique events (one list per bucket) and new ledger rows."""
        pending, self._pending, self._pending_events = self._pending, [], 0
        if not pending:
            return
        seen = self._warehouse.seen_event_ids(sorted({e["event_id"] for events in pending
                                                      for e in events}))
        for events in pending:
            yield from self._bucket(events, seen)

    def _bucket(self, events: list[dict], seen: dict[str, tuple[str, int, int]]) -> Iterator:
        unique, duplicates = first_occurrences(events, seen)
        for event in duplicates:
            topic = event["_topic"]
            counter = self._dup_counters.get(topic)
            if counter is None:
                counter = self._dup_counters[topic] = Metrics.counter(
                    "cx360.dedupe", f"duplicates:{topic}")
            counter.inc()
        newest: dict[str, int] = {}
        for event in unique:  # event-time watermark proxy, one update per topic and bucket
            if event["event_time"] > newest.get(event["_topic"], -1):
                newest[event["_topic"]] = event["event_time"]
        for topic, event_time in newest.items():
            Metrics.distribution("cx360.dedupe", f"event_time_ms:{topic}").update(event_time)
        yield pvalue.TaggedOutput(EVENT_ID_ROWS, [
            {"event_id": e["event_id"], "topic": e["_topic"], "partition": e["_partition"],
             "offset": e["_offset"], "event_time": e["event_time"]}
            for e in unique if e["event_id"] not in seen])
        yield unique
