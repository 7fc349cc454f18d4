"""The streaming sink: upserts with REPLACE semantics, so a later pane replaces an earlier one.

In the production streaming mode every trigger firing emits a pane that carries the window's
running total (ACCUMULATING). The sink writes it under the row's key (window + dimensions for
KPI tables): the newest pane's values replace the stored ones instead of being added to them.
A retried bundle or a re-fired pane writes the same key with the same values, so writes are
idempotent, which is what gives the exactly-once effect on top of the runner's exactly-once
processing (see docs/streaming.md).

Replacement is guarded, so late-arriving writes of older panes (bundles are not ordered) can
never overwrite newer ones:

* KPI rows (:data:`EVENT_COUNT_PANES`): replace iff ``(generation, pane_index)`` is at least the
  stored one. ``generation`` is the start time of the streaming job that wrote the row: a new
  job (not an update of a running one) starts its pane indexes from 0 again.
* web sessions (:data:`WEB_SESSIONS`): one row per session, keyed by (brand, cookie, start).
  A late event may extend a session or merge two (Beam resets pane indexes on merges), so a
  new row replaces every stored row of the same visitor that it overlaps, unless a stored row
  supersedes it (same or newer generation, covering its interval with at least as many
  events): the state after any order of writes is the newest pane of every session.
* dead letters: plain replace by ``dead_letter_id`` (at-least-once, stable id).

Backends: DuckDB is implemented here (tests, local); PostgreSQL and BigQuery implement
``upsert_panes(spec, rows)`` / ``upsert_sessions(spec, rows)`` / ``upsert_replace(spec, rows)``
themselves (postgres_backend.py: ``ON CONFLICT ... DO UPDATE ... WHERE`` and advisory locks per
visitor; bigquery_backend.py: staged rows, UPDATE + INSERT / DELETE + INSERT in one transaction
serialised per table by a lock row), with the same semantics: see docs/streaming.md. Any
backend object with those methods plugs in; they receive rows already reduced to the newest per
key (panes), per session (sessions) or the last per key (replace).
"""
from __future__ import annotations

import threading
import time
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from cx360.transforms.warehouse.base import Warehouse, WarehouseError
from cx360.transforms.warehouse.spec import (
    ASPECTS, BRAND_REPLIES, BRANDS, C, DEAD_LETTERS, EVENT_COUNTS, IDENTITY_TABLES,
    INBOUND_POSTS, PIPELINE_HEALTH, SOCIAL_KPIS, SOCIAL_KPIS_SLIDING, SURVEY_KPIS,
    SURVEY_KPIS_SLIDING, VOICE, WEB_EVENTS, TableSpec)

PANE_COLUMNS = (
    C("pane_index", "INT64", "Streaming: index of the pane (trigger firing) that wrote the row."),
    C("pane_timing", "STRING", "Streaming: EARLY | ON_TIME | LATE."),
    C("generation", "INT64", "Streaming: start (epoch ms) of the job that wrote the row."),
)

def pane_spec(spec: TableSpec, doc: str) -> TableSpec:
    """A micro-batch table as the streaming mode writes it: same name, key and columns
    (queries work on both) plus the pane columns; the newest pane replaces, not adds."""
    return TableSpec(name=spec.name, columns=spec.columns + PANE_COLUMNS, key=spec.key,
                     merge="replace", partition_by=spec.partition_by,
                     cluster_by=spec.cluster_by, doc=f"{spec.doc} Streaming: {doc}")


EVENT_COUNT_PANES = pane_spec(EVENT_COUNTS, "the newest pane of each window.")

WEB_SESSIONS = TableSpec(
    name="stream_web_sessions",
    columns=(
        C("brand", "STRING", "Brand whose shop was visited.", False),
        C("cookie_id", "STRING", "Visitor (first-party cookie).", False),
        C("session_start", "TIMESTAMP", "First event of the session (UTC).", False),
        C("session_end", "TIMESTAMP", "Last event plus the session gap (UTC).", False),
        C("last_event_at", "TIMESTAMP", "Last event of the session (UTC).", False),
        C("events", "INT64", "Accepted, de-duplicated web events in the session.", False),
    ) + PANE_COLUMNS,
    key=("brand", "cookie_id", "session_start"),
    merge="replace",
    partition_by="session_start",
    cluster_by=("brand",),
    doc="Streaming mode: web sessions (30 min inactivity gap) per brand and visitor, each at "
        "its newest pane. (The micro-batch mode derives sessions in the web_sessions view.)",
)

#: The per-brand daily session count (day of the session's start, UTC).
SESSION_COUNTS_VIEW = "stream_web_session_counts"
SESSION_COUNTS_SQL = (
    f"CREATE OR REPLACE VIEW {SESSION_COUNTS_VIEW} AS "
    "SELECT brand, CAST(session_start AS DATE) AS session_day, COUNT(*) AS sessions, "
    "SUM(events) AS events FROM stream_web_sessions GROUP BY brand, CAST(session_start AS DATE)")

PANE_TABLES = {spec.name: spec for spec in (EVENT_COUNT_PANES, WEB_SESSIONS, DEAD_LETTERS)}
#: pipeline_health as the streaming mode writes it (transforms/stream_health.py): one row per
#: interval and topic-partition, the newest pane wins; micro-batch rows leave the pane columns
#: NULL.
HEALTH_PANES = pane_spec(PIPELINE_HEALTH, "per interval, the newest pane.")
# Identity tables (transforms/identity_stream.py): the micro-batch specs, plain replace-upserts.
PANE_TABLES.update({spec.name: spec for spec in (*IDENTITY_TABLES, HEALTH_PANES)})
#: The CX KPI component tables as the streaming mode writes them (transforms/windowed.py
#: WindowedComponents): the micro-batch names, keys and columns, each window's newest pane.
KPI_COMPONENT_PANES = tuple(
    pane_spec(spec, "the newest pane of each window.")
    for spec in (SOCIAL_KPIS, VOICE, ASPECTS, SURVEY_KPIS, SOCIAL_KPIS_SLIDING,
                 SURVEY_KPIS_SLIDING))
#: The KPI fact tables (one row per event, keyed by it) and the brands dimension: the
#: micro-batch specs, plain replace-upserts.
KPI_FACT_TABLES = (INBOUND_POSTS, BRAND_REPLIES, WEB_EVENTS)
PANE_TABLES.update({spec.name: spec for spec in (*KPI_COMPONENT_PANES, *KPI_FACT_TABLES,
                                                 BRANDS)})
MODES = ("panes", "sessions", "replace")


def newest_panes(rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    """Per key, the row of the highest (generation, pane_index)."""
    best: dict[tuple, dict] = {}
    for row in rows:
        k = tuple(row[c] for c in key)
        stored = best.get(k)
        if stored is None or (row["generation"], row["pane_index"]) >= (
                stored["generation"], stored["pane_index"]):
            best[k] = row
    return list(best.values())


def supersedes(a: dict, b: dict) -> bool:
    """Session row ``a`` makes ``b`` obsolete (same visitor assumed)."""
    if a["generation"] != b["generation"]:
        return a["generation"] > b["generation"]
    return (a["session_start"] <= b["session_start"] and a["session_end"] >= b["session_end"]
            and a["events"] >= b["events"])


def newest_sessions(rows: list[dict]) -> list[dict]:
    """Drop rows that another row of the same batch supersedes (keep one of equal rows)."""
    by_visitor: dict[tuple, list[dict]] = {}
    for row in rows:
        by_visitor.setdefault((row["brand"], row["cookie_id"]), []).append(row)
    kept = []
    for visitor_rows in by_visitor.values():
        chosen: list[dict] = []
        for row in visitor_rows:
            if any(supersedes(other, row) for other in chosen):
                continue
            chosen = [other for other in chosen if not supersedes(row, other)] + [row]
        kept.extend(chosen)
    return kept


# -- DuckDB ------------------------------------------------------------------------------------

def _duckdb(warehouse: Warehouse):
    from cx360.transforms.warehouse.duckdb_backend import DuckDBWarehouse

    return warehouse if isinstance(warehouse, DuckDBWarehouse) else None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rollback(con) -> None:
    try:
        con.execute("ROLLBACK")
    except Exception:  # a failed COMMIT has already ended the transaction
        pass


def _in_transaction(warehouse, work, attempts: int = 5) -> int:
    """Run ``work(con)`` in one transaction; retry write-write conflicts (two bundles that
    upsert the same key at once)."""
    import duckdb

    for attempt in range(attempts):
        with warehouse._lock:  # the backend's lock: one statement stream per connection
            con = warehouse.con
            con.execute("BEGIN TRANSACTION")
            try:
                written = work(con)
                con.execute("COMMIT")
                return written
            except duckdb.TransactionException:
                _rollback(con)
                if attempt == attempts - 1:
                    raise
            except BaseException:
                _rollback(con)
                raise
        time.sleep(0.05 * (attempt + 1))
    return 0  # pragma: no cover


def _staged(con, spec: TableSpec, rows: list[dict], name: str) -> str:
    from cx360.transforms.warehouse.duckdb_backend import arrow_table

    con.register(name, arrow_table(spec, rows))
    return name


def _duckdb_upsert(warehouse, spec: TableSpec, rows: list[dict], guarded: bool) -> int:
    cols = ", ".join(_q(c) for c in spec.column_names)
    key = ", ".join(_q(k) for k in spec.key)
    others = [c for c in spec.column_names if c not in spec.key]
    action = "DO UPDATE SET " + ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in others)
    if guarded:
        t = _q(spec.name)
        action += (f" WHERE EXCLUDED.generation > COALESCE({t}.generation, -1) OR "
                   f"(EXCLUDED.generation = {t}.generation AND "
                   f"EXCLUDED.pane_index >= COALESCE({t}.pane_index, -1))")

    def work(con):
        view = _staged(con, spec, rows, f"_panes_{spec.name}")
        try:
            con.execute(f"INSERT INTO {_q(spec.name)} ({cols}) SELECT {cols} FROM {view} "
                        f"ON CONFLICT ({key}) {action}")
        finally:
            con.unregister(view)
        return len(rows)

    return _in_transaction(warehouse, work)


def _duckdb_sessions(warehouse, spec: TableSpec, rows: list[dict]) -> int:
    cols = ", ".join(_q(c) for c in spec.column_names)
    table = _q(spec.name)
    overlaps = ("t.brand = s.brand AND t.cookie_id = s.cookie_id "
                "AND t.session_start < s.session_end AND t.session_end > s.session_start")
    stored_wins = ("(t.generation > s.generation OR (t.generation = s.generation "
                   "AND t.session_start <= s.session_start AND t.session_end >= s.session_end "
                   "AND t.events >= s.events))")

    def work(con):
        view = _staged(con, spec, rows, "_sessions_in")
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _sessions_new AS "
                        f"SELECT {cols} FROM {view} s WHERE NOT EXISTS "
                        f"(SELECT 1 FROM {table} t WHERE {overlaps} AND {stored_wins})")
        finally:
            con.unregister(view)
        con.execute(f"DELETE FROM {table} t WHERE EXISTS "
                    f"(SELECT 1 FROM _sessions_new s WHERE {overlaps})")
        written = con.execute("SELECT COUNT(*) FROM _sessions_new").fetchone()[0]
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _sessions_new")
        con.execute("DROP TABLE _sessions_new")
        return written

    return _in_transaction(warehouse, work)


# -- entry points ---------------------------------------------------------------------------

def session_counts_sql(warehouse: Warehouse) -> str:
    """The CREATE VIEW of :data:`SESSION_COUNTS_VIEW` in ``warehouse``'s dialect (day of the
    session's start in UTC)."""
    kind = type(warehouse).__name__
    if kind == "PostgresWarehouse":
        return (f"CREATE OR REPLACE VIEW {SESSION_COUNTS_VIEW} AS SELECT brand, "
                "(session_start AT TIME ZONE 'UTC')::date AS session_day, COUNT(*) AS sessions, "
                "SUM(events)::bigint AS events FROM stream_web_sessions "
                "GROUP BY brand, (session_start AT TIME ZONE 'UTC')::date")
    if kind == "BigQueryWarehouse":  # names in a view must be qualified by the dataset
        view, table = (warehouse.quote(f"{warehouse.dataset}.{name}")
                       for name in (SESSION_COUNTS_VIEW, WEB_SESSIONS.name))
        return (f"CREATE OR REPLACE VIEW {view} AS SELECT brand, DATE(session_start) AS "
                f"session_day, COUNT(*) AS sessions, SUM(events) AS events FROM {table} "
                "GROUP BY brand, session_day")
    return SESSION_COUNTS_SQL


#: What two writers creating the same table or view at once get (DuckDB: a catalog conflict;
#: PostgreSQL: a duplicate pg_type row or "tuple concurrently updated"): retried.
_CREATE_RACES = ("onflict", "concurrently", "duplicate key", "already exists")


def prepare(warehouse: Warehouse, specs, attempts: int = 5) -> None:
    """Create the tables (and the session count view) the streaming sink writes. Several
    writer instances may do this at once: a conflict between their CREATE statements is
    retried."""
    specs = list(specs)
    duck = _duckdb(warehouse)
    for attempt in range(attempts):
        try:
            warehouse.ensure_tables(specs)
            if any(spec.name == WEB_SESSIONS.name for spec in specs):
                if duck is not None:
                    with warehouse._lock:
                        warehouse.con.execute(SESSION_COUNTS_SQL)
                else:
                    warehouse.query(session_counts_sql(warehouse))
            return
        except Exception as exc:
            if not any(race in str(exc) for race in _CREATE_RACES) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def upsert(warehouse: Warehouse, spec: TableSpec, rows: list[dict], mode: str) -> int:
    """Write ``rows`` into ``spec``'s table with the given replace ``mode`` (see MODES) in
    one transaction; returns the rows written."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if not rows:
        return 0
    if mode == "panes":
        rows = newest_panes(rows, spec.key)
    elif mode == "sessions":
        rows = newest_sessions(rows)
    else:
        rows = spec.combine(rows)  # replace: the last row per key
    own = getattr(warehouse, f"upsert_{mode}", None)
    if own is not None:
        return own(spec, rows)
    if _duckdb(warehouse) is None:
        raise WarehouseError(f"the {type(warehouse).__name__} backend cannot take streaming "
                             "upserts (implement upsert_panes/upsert_sessions/upsert_replace)")
    if mode == "sessions":
        return _duckdb_sessions(warehouse, spec, rows)
    return _duckdb_upsert(warehouse, spec, rows, guarded=(mode == "panes"))


#: One open warehouse per URL and process, shared by every writer instance in it: runners
#: that set a DoFn up per bundle (the DirectRunner) would otherwise reconnect each time, and
#: DuckDB takes one writer per file anyway (the backend's lock serializes the transactions).
_SHARED: dict[str, Warehouse] = {}
_PREPARED: set[tuple[str, str]] = set()
_SHARED_LOCK = threading.Lock()


def _closed(warehouse: Warehouse) -> bool:
    """Closed meanwhile: each backend drops its connection/client on close()."""
    return any(getattr(warehouse, attr, True) is None for attr in ("con", "conn", "client"))


def shared_warehouse(url: str, table: str) -> Warehouse:
    """The process's open warehouse for ``url``, with ``table`` prepared."""
    from cx360.transforms.warehouse import open_warehouse

    with _SHARED_LOCK:
        warehouse = _SHARED.get(url)
        if warehouse is None or _closed(warehouse):
            warehouse = _SHARED[url] = open_warehouse(url)
            _PREPARED.difference_update({k for k in _PREPARED if k[0] == url})
        if (url, table) not in _PREPARED:
            prepare(warehouse, [PANE_TABLES[table]])
            _PREPARED.add((url, table))
        return warehouse


def upsert_or_dead_letter(warehouse: Warehouse, table: str, rows: list[dict], mode: str
                          ) -> tuple[int, int]:
    """:func:`upsert` of ``rows`` into the streaming ``table``; rows the warehouse refuses one
    by one (BigQuery: ``RejectedRowsError``) become ``dead_letters`` rows (stage ``write``,
    BigQuery's reason and message, the row as JSON; see ``rejected_to_dead_letters``) and the
    rest is written again without them. Returns (rows written, rows rejected).

    A bundle that raised instead would be retried for ever by a streaming runner. Rejections of
    ``dead_letters`` rows themselves still raise: they are cx360's own rows, so a rejection is a
    bug to fix, not input to divert. The dead letters are written first and their ids are
    stable (``write/<table>/<insertId>``), so a retry after a crash in between rewrites the
    same ones."""
    spec = PANE_TABLES[table]
    try:
        return upsert(warehouse, spec, rows, mode), 0
    except WarehouseError as exc:
        rejected = getattr(exc, "rejected", None)
        if not rejected or table == DEAD_LETTERS.name:
            raise
    from cx360.transforms.warehouse.bigquery_backend import rejected_to_dead_letters

    upsert(warehouse, DEAD_LETTERS, rejected_to_dead_letters(
        rejected, batch_id=None, failed_at_ms=int(time.time() * 1000)), "replace")
    refused = {tuple(r.row.get(k) for k in spec.key) for r in rejected}
    rest = [row for row in rows if tuple(row.get(k) for k in spec.key) not in refused]
    return upsert(warehouse, spec, rest, mode), len(rejected)


#: The streaming sink writes a table's rows in batches of at most this many rows ...
SINK_BATCH_ROWS = 10_000
#: ... and at the latest this many seconds (processing time) after a batch's first row.
SINK_BUFFER_S = 5


class UpsertPanesFn(beam.DoFn):
    """``(table, rows)`` batches in (see :class:`UpsertPanes`); each batch is one
    replace-upsert transaction (rows the warehouse refuses: see :func:`upsert_or_dead_letter`).
    The warehouse client is opened in ``setup`` (never pickled) and shared by the writers of
    one process (see :func:`shared_warehouse`)."""

    def __init__(self, warehouse_url: str, table: str, mode: str):
        if table not in PANE_TABLES:
            raise ValueError(f"no streaming table {table!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.warehouse_url = warehouse_url
        self.table = table
        self.mode = mode
        self._warehouse = None

    def setup(self):
        self._warehouse = shared_warehouse(self.warehouse_url, self.table)
        if self.table != DEAD_LETTERS.name:  # where rows the warehouse refuses go
            shared_warehouse(self.warehouse_url, DEAD_LETTERS.name)

    def process(self, batch: tuple[str, Iterable[dict]]) -> Iterator[None]:
        rows = list(batch[1])
        if rows:
            written, rejected = upsert_or_dead_letter(self._warehouse, self.table, rows,
                                                      self.mode)
            Metrics.counter("cx360.write", f"rows_written:{self.table}").inc(written)
            Metrics.counter("cx360.write", f"batches:{self.table}").inc()
            if rejected:
                Metrics.counter("cx360.write", f"rows_rejected:{self.table}").inc(rejected)
                Metrics.counter("cx360.write", "rows_written:dead_letters").inc(rejected)
        return iter(())

    def teardown(self):
        self._warehouse = None  # shared: stays open for the other writers of the process


def _keyed(row: dict, table: str) -> tuple[str, dict]:
    return table, row


class UpsertPanes(beam.PTransform):
    """PCollection of rows -> replace-upserts into ``table`` (mode panes|sessions|replace).

    Rows are batched per table (``GroupIntoBatches`` on the table name in the global window:
    at most ``batch_rows`` rows, flushed ``buffer_s`` seconds after a batch's first row at the
    latest) and each batch is one transaction. Without it every bundle was one, and a
    streaming runner's bundles are small and many: on BigQuery one DML job per bundle and
    table, queued behind the table's sink lock. One key per table sends a table's writes to
    one worker at a time, which the BigQuery sink lock serialises anyway."""

    def __init__(self, warehouse_url: str, table: str, mode: str,
                 batch_rows: int = SINK_BATCH_ROWS, buffer_s: float = SINK_BUFFER_S):
        super().__init__()
        self.fn = UpsertPanesFn(warehouse_url, table, mode)
        self.batch_rows = batch_rows
        self.buffer_s = buffer_s

    def expand(self, rows):
        return (rows
                | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
                # A str key, so the state key coder is deterministic (Dataflow needs it).
                | "ByTable" >> beam.Map(_keyed, self.fn.table).with_output_types(
                    tuple[str, dict])
                | "Batch" >> beam.GroupIntoBatches(
                    self.batch_rows, max_buffering_duration_secs=self.buffer_s)
                | "Upsert" >> beam.ParDo(self.fn))
