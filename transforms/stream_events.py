"""Production streaming: record batches -> decoded, lateness-checked, de-duplicated events
stamped with their event time. Three steps, each with a stable label in the job graph:

1. :class:`DecodeStreamFn` decodes and validates with :class:`EventDecoder` (dead letters as in
   micro-batch mode). ``now`` for the future-timestamp check is the worker's processing time
   when the batch is decoded (micro-batches use the batch's recorded clock instead).
2. :class:`LatenessGateFn` routes events later than the allowed lateness to the dead letters
   (``too_late``, stage ``window``) BEFORE any GroupByKey, because the runner silently drops
   elements whose window has expired when they reach one.
3. :class:`DeduplicateByIdFn` lets the first copy of each ``event_id`` through, with per-id
   state garbage-collected by an event-time timer.

The lateness gate
-----------------
An event's *deadline* is the end of the earliest-ending window it belongs to plus the allowed
lateness (``WindowPlan.deadline``; all-or-nothing, so an event never counts in the daily row
but not the hourly one). The gate is a stateful DoFn keyed by source partition
(``topic/partition``), which receives each decoded batch whole. It dead-letters an event as
``too_late`` when its deadline is at or before either

* the Kafka timestamp of its record (clamped to the processing time): the record reached Kafka
  only after its window had closed for good. This verdict is deterministic, so a replay of
  the same offsets decides exactly as the live run did; or
* ``bound``, the timestamp of the gate's last fired event-time timer on that key. A timer
  fires only once the input watermark has passed it, so ``bound`` is a lower bound of the
  watermark: any event whose deadline is at or before it is certainly expired. The timers
  loop (``bound + step``) while the partition is active and stop after ``idle_steps`` firings
  without input (so draining a job, where the watermark jumps to the end of time, ends).

Why nothing that passes the gate can be dropped at a GroupByKey: the source stamps a batch with
the Kafka timestamp of its first record, and a runner holds a stage's input watermark at the
oldest element still pending for it (Beam's watermark definition: the DirectRunner's pending
bundles, Flink's in-band watermarks, Dataflow's in-flight message tracking). So while an event
travels from the gate to the GroupByKeys, the watermark there stays at or below its batch's
timestamp, and that is (up to the disorder of Kafka timestamps within a partition) at or
before the record's own Kafka timestamp, which the gate checked to be before the deadline.
The GroupByKeys get ``allowed_lateness + lateness_slack`` (default 10 min), so the slack
absorbs that disorder and producer clocks running behind the pipeline's workers. An event that
passed the gate (deadline after ``bound``) can only be dropped by a GroupByKey if the
watermark was more than ``lateness_slack`` past its deadline, i.e. more than the slack past
``bound``: while a partition's timers run, ``bound`` trails the watermark by about one
``step`` (default 1 min), so that cannot happen. It remains possible only for a batch that
arrives more than ``lateness_slack`` behind the watermark at a partition whose timers are not
running yet (its first batch) or have stopped (its first batch after ``idle_steps`` quiet
steps). Runners count such drops (Dataflow ``droppedDueToLateness``, Flink
``numLateRecordsDropped``); alert on them. The gate and the de-duplication themselves run in
the global window, which never expires, so nothing is dropped before the gate.

The gate is conservative: it never dead-letters an event that a watermark-exact check would
have accepted, except through the Kafka-time rule (a record appended after its deadline is
too late even if a lagging partition still holds the watermark back: deterministic verdicts
are worth more than that case). It may accept an event up to one ``step`` after the
watermark passed its deadline; such an event is counted in a late pane, never lost.

De-duplication state
--------------------
Keyed by ``event_id`` in the global window: a flag, set by the first copy, and an event-time
timer that clears it at ``max(event_time + dedupe_horizon, latest window end + allowed
lateness + slack)``. Until then every copy is dropped (and counted in the
``cx360.dedupe/duplicates:<topic>`` metric). After it, no copy with the same event time can
reach a window any more (the gate dead-letters it as too late), so an event can never be
counted twice; the horizon (default 24 h) additionally covers copies re-sent with a different
event time. State grows with the number of distinct ids seen within that span: on the order of
a day's events, a flag each. The first copy processed wins (in micro-batch mode the lowest
offset does); copies of one event are identical, so counts do not differ.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BooleanCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from cx360.schemas.codec import DecodeError
from cx360.schemas.registry import RegistryError, SchemaRegistry
from cx360.transforms.decode import DEAD_LETTER, EventDecoder, dead_letter
from cx360.transforms.kafka_io import KafkaRecord, unpack_records
from cx360.transforms.validate import DEFAULT_MAX_FUTURE_MS
from cx360.transforms.windowed import WindowPlan, event_timestamp


def _iso(ts: Timestamp) -> str:
    return ts.to_rfc3339()


class _Clock:
    """Processing time in epoch ms, or a fixed instant (tests)."""

    def __init__(self, fixed_now_ms: int | None = None):
        self.fixed_now_ms = fixed_now_ms

    def now_ms(self) -> int:
        if self.fixed_now_ms is not None:
            return self.fixed_now_ms
        return int(time.time() * 1000)


def partition_key(record: KafkaRecord) -> str:
    return f"{record.topic}/{record.partition}"


class _Counters:
    def __init__(self, namespace: str):
        self.namespace = namespace
        self._counters = {}

    def inc(self, name: str, n: int = 1) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(self.namespace, name)
        counter.inc(n)


class DecodeStreamFn(beam.DoFn):
    """A batch of KafkaRecord -> ``(topic/partition, [(record, event), ...])`` per partition
    in the batch; dead letters to the ``dead_letter`` output.

    The record travels with its event as far as the lateness gate, which needs the original
    bytes for a ``too_late`` dead letter. ``now`` is the processing time of the batch (or
    ``fixed_now_ms`` in tests): an event stamped more than ``max_future_ms`` after it is a
    ``future_timestamp`` dead letter, so it never reaches a window."""

    def __init__(self, registry: SchemaRegistry, topics: dict[str, str],
                 max_future_ms: int = DEFAULT_MAX_FUTURE_MS, fixed_now_ms: int | None = None):
        self.registry = registry
        self.topics = topics
        self.max_future_ms = max_future_ms
        self.clock = _Clock(fixed_now_ms)
        self._decoder = None
        self._counters = _Counters("cx360.decode")

    def setup(self):
        self._decoder = EventDecoder(self.registry, self.topics, self.max_future_ms)

    def process(self, batch: bytes | list[KafkaRecord]) -> Iterator:
        now_ms = self.clock.now_ms()
        decoder = self._decoder
        by_partition: dict[str, list] = {}
        for record in unpack_records(batch):
            try:
                event = decoder.decode(record, now_ms)
            except DecodeError as exc:
                self._counters.inc(f"dead_letters:{record.topic}:{exc.reason}")
                yield pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                    record, exc.reason, exc.detail, stage=exc.stage, schema_id=exc.schema_id,
                    failed_at_ms=now_ms))
                continue
            except RegistryError as exc:
                # Not the record's fault: fail the bundle so that the runner retries it.
                raise RuntimeError(f"schema registry failed: {exc}") from exc
            self._counters.inc(f"accepted:{record.topic}")
            by_partition.setdefault(partition_key(record), []).append((record, event))
        for key, pairs in by_partition.items():
            yield key, pairs


class LatenessGateFn(beam.DoFn):
    """``(topic/partition, [(record, event)])`` -> events stamped with their event time, or
    ``too_late`` dead letters. See the module docstring for the design."""

    BOUND = ReadModifyWriteStateSpec("watermark_bound_us", VarIntCoder())
    ARMED = ReadModifyWriteStateSpec("armed_timer_us", VarIntCoder())
    IDLE = ReadModifyWriteStateSpec("idle_firings", VarIntCoder())
    TICK = TimerSpec("watermark_probe", TimeDomain.WATERMARK)

    def __init__(self, plan: WindowPlan, step_s: int = 60, idle_steps: int = 60,
                 fixed_now_ms: int | None = None):
        if step_s <= 0 or idle_steps < 1:
            raise ValueError("the gate needs a positive step and at least one idle step")
        self.plan = plan
        self.step = Duration(seconds=step_s)
        self.idle_steps = idle_steps
        self.clock = _Clock(fixed_now_ms)
        self._counters = _Counters("cx360.window")

    def _first_probe(self, bound: Timestamp | None, batch_ts: Timestamp) -> Timestamp:
        step_us = self.step.micros
        floor = Timestamp(micros=batch_ts.micros - batch_ts.micros % step_us)
        if bound is None:
            return floor + self.step
        return max(bound + self.step, floor)

    def process(self, element: tuple[str, list[tuple[KafkaRecord, dict]]],
                batch_ts=beam.DoFn.TimestampParam,
                tick=beam.DoFn.TimerParam(TICK),
                bound_state=beam.DoFn.StateParam(BOUND),
                armed_state=beam.DoFn.StateParam(ARMED),
                idle_state=beam.DoFn.StateParam(IDLE)) -> Iterator:
        _, pairs = element
        bound_us = bound_state.read()
        bound = Timestamp(micros=bound_us) if bound_us is not None else None
        now_ms = self.clock.now_ms()
        plan = self.plan
        for record, event in pairs:
            ts = event_timestamp(event)
            deadline = plan.deadline(event["_role"], ts)
            kafka_ms = record.timestamp_ms
            kafka_ts = (Timestamp(micros=min(kafka_ms, now_ms) * 1000)
                        if kafka_ms is not None and kafka_ms >= 0 else None)
            if bound is not None and deadline <= bound:
                why = f"the watermark had reached {_iso(bound)}"
            elif kafka_ts is not None and deadline <= kafka_ts:
                why = f"the record reached Kafka at {_iso(kafka_ts)}"
            else:
                yield TimestampedValue(event, ts)
                continue
            self._counters.inc(f"too_late:{record.topic}")
            detail = (f"event_time {_iso(ts)} is later than the allowed lateness "
                      f"({plan.allowed_lateness_s} s after the end of its window): its deadline "
                      f"{_iso(deadline)} had passed when it arrived ({why})")
            yield pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                record, "too_late", detail, stage="window", schema_id=event.get("_schema_id"),
                failed_at_ms=now_ms))
        idle_state.write(0)
        if armed_state.read() is None:
            probe = self._first_probe(bound, batch_ts)
            tick.set(probe)
            armed_state.write(probe.micros)

    @on_timer(TICK)
    def on_probe(self, fired=beam.DoFn.TimestampParam,
                 tick=beam.DoFn.TimerParam(TICK),
                 bound_state=beam.DoFn.StateParam(BOUND),
                 armed_state=beam.DoFn.StateParam(ARMED),
                 idle_state=beam.DoFn.StateParam(IDLE)):
        bound_state.write(fired.micros)
        idle = (idle_state.read() or 0) + 1
        idle_state.write(idle)
        following = fired + self.step
        if idle <= self.idle_steps and following < MAX_TIMESTAMP:
            tick.set(following)
            armed_state.write(following.micros)
        else:
            armed_state.clear()


class DeduplicateByIdFn(beam.DoFn):
    """``(event_id, event)`` -> the event, for the first copy of each id only. See the module
    docstring for the state and its garbage collection."""

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    GC = TimerSpec("forget_id", TimeDomain.WATERMARK)

    def __init__(self, plan: WindowPlan, horizon_s: int = 86400):
        if horizon_s <= 0:
            raise ValueError("the de-duplication horizon must be positive")
        self.plan = plan
        self.horizon = Duration(seconds=horizon_s)
        self._counters = _Counters("cx360.dedupe")

    def forget_at(self, event: dict) -> Timestamp:
        ts = event_timestamp(event)
        return max(ts + self.horizon, self.plan.last_deadline(event["_role"], ts))

    def process(self, element: tuple[str, dict],
                seen=beam.DoFn.StateParam(SEEN),
                gc=beam.DoFn.TimerParam(GC)) -> Iterator[dict]:
        _, event = element
        if seen.read():
            self._counters.inc(f"duplicates:{event['_topic']}")
            return
        seen.write(True)
        gc.set(self.forget_at(event))
        self._counters.inc(f"unique:{event['_topic']}")
        yield event

    @on_timer(GC)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class StreamEvents(beam.PTransform):
    """Record batches -> ``{'events': unique timestamped events, 'dead_letters': ...}``."""

    def __init__(self, registry: SchemaRegistry, topics: dict[str, str], plan: WindowPlan,
                 max_future_ms: int = DEFAULT_MAX_FUTURE_MS, dedupe_horizon_s: int = 86400,
                 gate_step_s: int = 60, gate_idle_steps: int = 60,
                 fixed_now_ms: int | None = None):
        super().__init__()
        self.registry = registry
        self.topics = topics
        self.plan = plan
        self.max_future_ms = max_future_ms
        self.dedupe_horizon_s = dedupe_horizon_s
        self.gate_step_s = gate_step_s
        self.gate_idle_steps = gate_idle_steps
        self.fixed_now_ms = fixed_now_ms

    def expand(self, batches):
        # Typed string keys: a deterministic key coder, as stateful DoFns need.
        decoded = batches | "DecodeAndValidate" >> beam.ParDo(DecodeStreamFn(
            self.registry, self.topics, self.max_future_ms, self.fixed_now_ms)
        ).with_output_types(Tuple[str, Any]).with_outputs(DEAD_LETTER, main="events")
        gated = decoded.events | "LatenessGate" >> beam.ParDo(LatenessGateFn(
            self.plan, self.gate_step_s, self.gate_idle_steps, self.fixed_now_ms)).with_outputs(
                DEAD_LETTER, main="events")
        unique = (gated.events
                  | "KeyByEventId" >> beam.Map(
                      lambda event: (event["event_id"], event)).with_output_types(Tuple[str, Any])
                  | "DeduplicateByEventId" >> beam.ParDo(
                      DeduplicateByIdFn(self.plan, self.dedupe_horizon_s)))
        dead = ((decoded[DEAD_LETTER], gated[DEAD_LETTER])
                | "AllDeadLetters" >> beam.Flatten())
        return {"events": unique, "dead_letters": dead}


__all__ = ["DecodeStreamFn", "DeduplicateByIdFn", "LatenessGateFn", "StreamEvents",
           "partition_key"]
