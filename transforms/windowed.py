"""Event-time windows for the production streaming mode: window families, one trigger and
lateness policy for all of them, mergeable KPI components combined per (window, dimensions),
and web sessions.

Every window family (fixed windows of each configured size, sliding windows where configured,
30-minute sessions for web events) uses the same :class:`WindowPlan`:

* trigger ``AfterWatermark(early=AfterProcessingTime(early_firing), late=AfterCount(1))`` with
  ACCUMULATING panes: early panes while the window is open, one on-time pane when the watermark
  passes its end, then one late pane per late event; every pane carries the running total, so
  the newest pane of a window is its complete value so far;
* allowed lateness ``allowed_lateness``, decided BEFORE the windows by the lateness gate
  (:mod:`cx360.transforms.stream_events`): events later than that go to the dead letters
  (``too_late``) and never reach a window. The GroupByKeys themselves get
  ``allowed_lateness + lateness_slack``, so nothing the gate let through can be dropped by the
  runner (see the gate's docstring for why the slack suffices).

``event_counts`` is a :class:`Kpi` (dimensions and mergeable components of an event):
:class:`WindowedKpi` combines them per (window, dimensions) in every fixed family and emits
one row per pane. The CX KPI component tables (social_kpis, share_of_voice_counts,
aspect_mentions, survey_kpis and the ``*_sliding`` twins) go through
:class:`WindowedComponents`: one combine per family keyed by (table, dimensions), fed by
:func:`cx360.transforms.kpis.event_components`, the per-event logic the micro-batch mode uses
too, so both modes write the same rows.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.transforms import trigger as triggers
from apache_beam.transforms.window import (FixedWindows, GlobalWindows, Sessions,
                                           SlidingWindows, WindowFn)
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from cx360.transforms.counts import dimensions as count_dimensions
from cx360.transforms.kpis import (COMPONENT_TABLES, SLIDING_TABLES, component_row,
                                   event_components)

DAY_S = 86400


def event_timestamp(event: dict) -> Timestamp:
    """The Beam timestamp of an event: its ``event_time`` (epoch ms), exactly."""
    return Timestamp(micros=int(event["event_time"]) * 1000)


def to_ms(ts: Timestamp) -> int:
    return ts.micros // 1000


def _duration_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclasses.dataclass(frozen=True)
class WindowFamily:
    """Fixed windows of ``size_s``, or sliding windows of ``size_s`` every ``period_s``; all
    aligned to the UTC epoch (so daily windows start at midnight UTC)."""

    size_s: int
    period_s: int | None = None

    def __post_init__(self):
        if self.size_s <= 0:
            raise ValueError("window size must be positive")
        if DAY_S % self.size_s and self.size_s % DAY_S:
            raise ValueError(f"window size {_duration_label(self.size_s)} must divide a day or "
                             "be whole days (e.g. 15m, 1h, 1d)")
        if self.period_s is not None:
            if not 0 < self.period_s < self.size_s or self.size_s % self.period_s:
                raise ValueError(
                    f"sliding windows of {_duration_label(self.size_s)} need a period shorter "
                    f"than the size that divides it, got {_duration_label(self.period_s)}")

    @property
    def sliding(self) -> bool:
        return self.period_s is not None

    @property
    def label(self) -> str:
        if self.sliding:
            return f"Sliding{_duration_label(self.size_s)}Every{_duration_label(self.period_s)}"
        return f"Fixed{_duration_label(self.size_s)}"

    def windowfn(self) -> WindowFn:
        if self.sliding:
            return SlidingWindows(self.size_s, self.period_s)
        return FixedWindows(self.size_s)


def parse_sliding(text: str, parse_duration: Callable[[str], int]) -> tuple[WindowFamily, ...]:
    """``'1h/15m,1d/1h'`` -> sliding families (size/period)."""
    families = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        size, sep, period = part.partition("/")
        if not sep:
            raise ValueError(f"sliding window {part!r} needs SIZE/PERIOD, e.g. 1h/15m")
        families.append(WindowFamily(parse_duration(size), parse_duration(period)))
    return tuple(families)


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """The windows, trigger and lateness shared by every windowed KPI."""

    families: tuple[WindowFamily, ...] = (WindowFamily(3600), WindowFamily(86400))
    session_gap_s: int | None = 1800
    session_roles: tuple[str, ...] = ("web",)
    allowed_lateness_s: int = 6 * 3600
    lateness_slack_s: int = 600
    early_firing_s: int = 60

    def __post_init__(self):
        if not self.families and not self.session_gap_s:
            raise ValueError("no windows configured")
        if len(set(self.families)) != len(self.families):
            raise ValueError("a window family is configured twice")
        if self.allowed_lateness_s < 0 or self.lateness_slack_s < 0:
            raise ValueError("allowed lateness and slack must not be negative")
        if self.early_firing_s <= 0:
            raise ValueError("the early firing delay must be positive")

    @property
    def fixed(self) -> tuple[WindowFamily, ...]:
        return tuple(f for f in self.families if not f.sliding)

    @property
    def sliding(self) -> tuple[WindowFamily, ...]:
        return tuple(f for f in self.families if f.sliding)

    # -- which windows an event belongs to ------------------------------------------------
    def windowfns_for(self, role: str) -> list[WindowFn]:
        fns = [family.windowfn() for family in self.families]
        if self.session_gap_s and role in self.session_roles:
            fns.append(Sessions(self.session_gap_s))
        return fns

    def _ends(self, role: str, ts: Timestamp) -> list[Timestamp]:
        context = WindowFn.AssignContext(ts)
        return [w.end for fn in self.windowfns_for(role) for w in fn.assign(context)]

    def deadline(self, role: str, ts: Timestamp) -> Timestamp:
        """When an event stamped ``ts`` becomes too late: the end of the EARLIEST-ending
        window it belongs to, plus the allowed lateness. An event counts in all its windows
        or in none (the hourly and daily rows of one window family always agree)."""
        return min(self._ends(role, ts)) + Duration(seconds=self.allowed_lateness_s)

    def last_deadline(self, role: str, ts: Timestamp) -> Timestamp:
        """The last instant any GroupByKey still accepts the event: the end of its
        LATEST-ending window plus allowed lateness and slack."""
        return max(self._ends(role, ts)) + Duration(
            seconds=self.allowed_lateness_s + self.lateness_slack_s)

    # -- windowing strategy ----------------------------------------------------------------
    @property
    def gbk_allowed_lateness_s(self) -> int:
        return self.allowed_lateness_s + self.lateness_slack_s

    def trigger(self):
        return triggers.AfterWatermark(
            early=triggers.AfterProcessingTime(self.early_firing_s),
            late=triggers.AfterCount(1))

    def window_into(self, windowfn: WindowFn) -> beam.WindowInto:
        return beam.WindowInto(
            windowfn, trigger=self.trigger(),
            accumulation_mode=triggers.AccumulationMode.ACCUMULATING,
            allowed_lateness=Duration(seconds=self.gbk_allowed_lateness_s))


# -- KPI components ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Kpi:
    """A windowed KPI: the table it goes to, its dimensions and its mergeable components
    (values that add up across any split of the data: counts and sums, never ratios)."""

    table: str
    dimension_names: tuple[str, ...]
    dimensions: Callable[[dict], tuple]
    component_names: tuple[str, ...]
    components: Callable[[dict], tuple]
    roles: tuple[str, ...] = ("social", "web", "survey")


def event_count_dimensions(event: dict) -> tuple[str, str, str, str, str]:
    """(event_kind, topic, event_type, brand, channel): the event_counts dimensions."""
    event_type, brand, channel = count_dimensions(event)
    return event["_role"], event["_topic"], event_type, brand, channel


def one_event(event: dict) -> tuple[int]:
    return (1,)


EVENT_COUNTS_KPI = Kpi(
    table="event_counts",
    dimension_names=("event_kind", "topic", "event_type", "brand", "channel"),
    dimensions=event_count_dimensions,
    component_names=("events",),
    components=one_event,
)


class SumComponents(beam.CombineFn):
    """Element-wise sum of component tuples: mergeable, so runners pre-combine before the
    shuffle (combiner lifting) and panes combine exactly."""

    def __init__(self, width: int):
        self.width = width

    def create_accumulator(self) -> tuple:
        return (0,) * self.width

    def add_input(self, acc: tuple, values: tuple) -> tuple:
        return tuple(a + v for a, v in zip(acc, values))

    def add_inputs(self, acc: tuple, inputs: Iterable[tuple]) -> tuple:
        totals = list(acc)
        for values in inputs:
            for i, v in enumerate(values):
                totals[i] += v
        return tuple(totals)

    def merge_accumulators(self, accumulators: Iterable[tuple]) -> tuple:
        return self.add_inputs(self.create_accumulator(), accumulators)

    def extract_output(self, acc: tuple) -> tuple:
        return acc


def pane_columns(pane, generation: int) -> dict:
    return {"pane_index": pane.index, "pane_timing": PaneInfoTiming.to_string(pane.timing),
            "generation": generation}


class KpiRowsFn(beam.DoFn):
    """``(dimensions, components)`` of one pane -> a warehouse row keyed by window and
    dimensions, with the pane's index and timing (the replace-upsert keeps the newest)."""

    def __init__(self, kpi: Kpi, family: WindowFamily, generation: int):
        self.kpi = kpi
        self.family = family
        self.generation = generation

    def process(self, element: tuple[tuple, tuple], window=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam) -> Iterator[dict]:
        dims, values = element
        row = {"window_seconds": self.family.size_s, "window_start": to_ms(window.start),
               "window_end": to_ms(window.end)}
        row.update(zip(self.kpi.dimension_names, dims))
        row.update(zip(self.kpi.component_names, values))
        row.update(pane_columns(pane, self.generation))
        yield row


def _kpi_pair(kpi: Kpi):
    def pair(event: dict) -> tuple[tuple, tuple]:
        return kpi.dimensions(event), kpi.components(event)
    return pair


class WindowedKpi(beam.PTransform):
    """Timestamped events -> rows of ``kpi`` per pane, per window of every fixed family.

    Returns ``{family label: windowed rows}`` (for tests that look at windows and panes)
    plus ``'rows'``: all rows re-windowed into the global window, ready for the sink."""

    def __init__(self, kpi: Kpi, plan: WindowPlan, generation: int):
        super().__init__()
        self.kpi = kpi
        self.plan = plan
        self.generation = generation

    def expand(self, events):
        kpi = self.kpi
        if set(kpi.roles) != {"social", "web", "survey"}:
            roles = kpi.roles
            events = events | "OnlyRoles" >> beam.Filter(lambda e: e["_role"] in roles)
        pairs = events | "DimensionsAndComponents" >> beam.Map(_kpi_pair(kpi))
        out, rows = {}, []
        # Fixed windows only, as in micro-batch mode: the table's key has no period, so
        # overlapping sliding windows would mix with them (sliding windows feed the *_sliding
        # component tables, see WindowedComponents).
        for family in self.plan.fixed:
            windowed = (
                pairs
                | f"{family.label}Windows" >> self.plan.window_into(family.windowfn())
                | f"{family.label}Combine" >> beam.CombinePerKey(
                    SumComponents(len(kpi.component_names)))
                | f"{family.label}Rows" >> beam.ParDo(KpiRowsFn(kpi, family, self.generation)))
            out[family.label] = windowed
            rows.append(windowed | f"{family.label}Unwindowed" >> beam.WindowInto(
                GlobalWindows()))
        out["rows"] = rows | "AllRows" >> beam.Flatten()
        return out


# -- the CX KPI component tables ------------------------------------------------------------

class SumParts(beam.CombineFn):
    """Element-wise sum of component tuples of any width (all values of one key have the
    width of their table): mergeable, so the runner pre-combines before the shuffle."""

    def create_accumulator(self) -> tuple:
        return ()

    def add_input(self, acc: tuple, values: tuple) -> tuple:
        return tuple(a + v for a, v in zip(acc, values)) if acc else tuple(values)

    def add_inputs(self, acc: tuple, inputs: Iterable[tuple]) -> tuple:
        totals = list(acc)
        for values in inputs:
            if totals:
                for i, v in enumerate(values):
                    totals[i] += v
            else:
                totals = list(values)
        return tuple(totals)

    def merge_accumulators(self, accumulators: Iterable[tuple]) -> tuple:
        return self.add_inputs((), accumulators)

    def extract_output(self, acc: tuple) -> tuple:
        return acc


def component_parts(scored: tuple[dict, dict | None]) -> Iterator[tuple[tuple, tuple]]:
    """An ``(event, sentiment score)`` pair -> ``((table, dimensions), components)`` for
    every component row of the event (:func:`cx360.transforms.kpis.event_components`)."""
    event, score = scored
    for table, dims, values in event_components(event, score):
        yield (table, dims), values


class ComponentRowsFn(beam.DoFn):
    """``((table, dimensions), components)`` of one pane -> ``(table, warehouse row)``
    (``*_sliding`` tables for sliding families): the micro-batch columns plus the pane's
    index and timing (the replace-upsert keeps the newest)."""

    def __init__(self, family: WindowFamily, generation: int):
        self.family = family
        self.generation = generation

    def process(self, element: tuple[tuple, tuple], window=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam):
        (table, dims), values = element
        row = {"window_seconds": self.family.size_s, "window_start": to_ms(window.start),
               "window_end": to_ms(window.end)}
        name = table
        if self.family.sliding:
            row["window_period_seconds"] = self.family.period_s
            name = SLIDING_TABLES[table]
        row.update(component_row(table, dims, values))
        row.update(pane_columns(pane, self.generation))
        yield name, row


def rows_by_table(named_row: tuple[str, dict]):
    name, row = named_row
    yield beam.pvalue.TaggedOutput(name, row)


def component_tables(plan: WindowPlan) -> tuple[str, ...]:
    """The component tables ``plan`` fills: every one for fixed families, the ``*_sliding``
    ones for sliding families (as ``cx360 run --windows/--sliding`` does)."""
    tables = tuple(COMPONENT_TABLES) if plan.fixed else ()
    return tables + (tuple(SLIDING_TABLES.values()) if plan.sliding else ())


class WindowedComponents(beam.PTransform):
    """Timestamped ``(event, sentiment score)`` pairs -> rows of the CX KPI component tables
    (social_kpis, share_of_voice_counts, aspect_mentions, survey_kpis and, for sliding
    families, social_kpis_sliding and survey_kpis_sliding), one per pane of each window and
    (table, dimensions).

    One combine per window family over all tables (key: table and dimensions), with the
    plan's trigger. Returns ``{table: rows in the global window}``, ready for the sink."""

    def __init__(self, plan: WindowPlan, generation: int):
        super().__init__()
        self.plan = plan
        self.generation = generation

    def expand(self, scored):
        parts = scored | "Components" >> beam.FlatMap(component_parts)
        sliding_parts = None
        rows = []
        for family in self.plan.families:
            source = parts
            if family.sliding:
                if sliding_parts is None:
                    sliding_parts = parts | "SlidingTablesOnly" >> beam.Filter(
                        lambda part: part[0][0] in SLIDING_TABLES)
                source = sliding_parts
            rows.append(
                source
                | f"{family.label}Windows" >> self.plan.window_into(family.windowfn())
                | f"{family.label}Combine" >> beam.CombinePerKey(SumParts())
                | f"{family.label}Rows" >> beam.ParDo(ComponentRowsFn(family, self.generation))
                | f"{family.label}Unwindowed" >> beam.WindowInto(GlobalWindows()))
        tables = component_tables(self.plan)
        split = (rows
                 | "AllRows" >> beam.Flatten()
                 | "ByTable" >> beam.FlatMap(rows_by_table).with_outputs(*tables))
        return {table: split[table] for table in tables}


def table_label(table: str) -> str:
    """A step label from a table name: ``social_kpis`` -> ``SocialKpis``."""
    return "".join(part.capitalize() for part in table.split("_"))


# -- web sessions -----------------------------------------------------------------------------

def session_key(event: dict) -> tuple[str, str]:
    """A visitor of a brand's shop: sessions are per brand and cookie (device/browser)."""
    return event["brand"], event["cookie_id"]


class SessionSummary(beam.CombineFn):
    """(events, last event time ms) of a session; mergeable, like every component."""

    def create_accumulator(self) -> tuple[int, int]:
        return 0, 0

    def add_input(self, acc, event_time_ms: int):
        return acc[0] + 1, max(acc[1], event_time_ms)

    def merge_accumulators(self, accumulators):
        events, last = 0, 0
        for n, t in accumulators:
            events += n
            last = max(last, t)
        return events, last

    def extract_output(self, acc):
        return acc


class SessionRowsFn(beam.DoFn):
    def __init__(self, generation: int):
        self.generation = generation

    def process(self, element, window=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam) -> Iterator[dict]:
        (brand, cookie_id), (events, last_ms) = element
        row = {"brand": brand, "cookie_id": cookie_id, "session_start": to_ms(window.start),
               "session_end": to_ms(window.end), "last_event_at": last_ms, "events": events}
        row.update(pane_columns(pane, self.generation))
        yield row


class WebSessions(beam.PTransform):
    """Web events -> one row per (brand, cookie) session and pane: session windows with a
    ``session_gap_s`` inactivity gap under the same trigger and lateness as every window.

    A session starts at its first event and ends ``gap`` after its last (Beam's session
    window). A late event can extend a session or merge two; the sink then replaces the rows
    it covers, so the per-brand daily count (view ``stream_web_session_counts``) stays exact.
    The count is not a second Beam aggregation on purpose: re-aggregating accumulating panes
    would count a session once per pane, and merged sessions would need retractions, which
    Beam lacks.

    Returns ``{'sessions': windowed rows, 'rows': the same in the global window}``."""

    def __init__(self, plan: WindowPlan, generation: int):
        super().__init__()
        self.plan = plan
        self.generation = generation

    def expand(self, events):
        roles = self.plan.session_roles
        sessions = (
            events
            | "WebEvents" >> beam.Filter(lambda e: e["_role"] in roles)
            | "ByVisitor" >> beam.Map(lambda e: (session_key(e), e["event_time"]))
            | "SessionWindows" >> self.plan.window_into(Sessions(self.plan.session_gap_s))
            | "SummarizeSession" >> beam.CombinePerKey(SessionSummary())
            | "SessionRows" >> beam.ParDo(SessionRowsFn(self.generation)))
        return {"sessions": sessions,
                "rows": sessions | "SessionsUnwindowed" >> beam.WindowInto(GlobalWindows())}
