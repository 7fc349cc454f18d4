"""PostgreSQL warehouse: COPY into a temporary table, then one ``INSERT ... ON CONFLICT``.

For teams that want live BI reads while the pipeline writes: PostgreSQL serves readers in other
processes during a write (MVCC), which an embedded DuckDB file cannot.

URL: ``postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE[?schema=NAME&...]`` (``postgres://``
works too). The password comes from the URL or, as everywhere in libpq, from the ``PGPASSWORD``
environment variable or ``~/.pgpass``; it is never logged and never part of ``self.url`` or of an
error message. ``schema`` (ours) puts every table, the ledger included, into that schema (created
if missing); every other query parameter (``sslmode``, ``connect_timeout``, ...) goes to libpq.

Table layout, from the specs: a PRIMARY KEY on the spec's key (the upsert's conflict target) and a
BRIN index on ``partition_by`` (cheap, fits append-mostly time columns, serves dashboard time
ranges). ``cluster_by`` is BigQuery-only and ignored here. Types: STRING TEXT, INT64 BIGINT,
FLOAT64 DOUBLE PRECISION, BOOL BOOLEAN, BYTES BYTEA, TIMESTAMP TIMESTAMPTZ. TIMESTAMPTZ is an
absolute instant (what our epoch-millisecond values are); every session of this backend sets
``TimeZone=UTC`` so values print and read back in UTC; BI tools show them in their session's
zone, which is the right behaviour for an instant. Values come back as timezone-aware datetimes.

Write path (``write_batch``), in ONE transaction: lock the batch's ledger row (``SELECT ... FOR
UPDATE``: a second writer of the same batch waits, then sees 'applied' and writes nothing); per
table, de-duplicate the rows by key (``TableSpec.combine``), COPY them in binary format into a
``TEMP`` table (``ON COMMIT DROP``; TIMESTAMP travels as BIGINT milliseconds and is converted in
SQL, exactly), ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE/NOTHING`` with the same merge
modes as DuckDB (add: ``c = stored.c + new.c`` for additive columns; replace: every non-key column
from the new row; ignore: keep the stored row); set the batch 'applied'; COMMIT. Any error rolls
everything back: the batch stays 'pending'.

The streaming sink (``upsert_panes`` / ``upsert_sessions`` / ``upsert_replace``, for ``cx360
stream``): the same COPY, then ``ON CONFLICT (key) DO UPDATE ... WHERE <pane guard>`` (evaluated
on the locked row, so concurrent writers cannot let an older pane win) or, for sessions, an
advisory lock per visitor before the DELETE + INSERT; deadlocks are retried. See
docs/streaming.md.

``query(sql, params)`` takes PostgreSQL SQL with psycopg placeholders (``%s``).
"""
from __future__ import annotations

import json
import pathlib
import random
import threading
import time
import urllib.parse
from typing import Iterable, Sequence

import psycopg
from psycopg import sql as pgsql

from cx360.transforms.kafka_io import PartitionRange
from cx360.transforms.warehouse.base import Batch, Warehouse, WarehouseError
from cx360.transforms.warehouse.spec import TableSpec

PG_TYPES = {"STRING": "TEXT", "INT64": "BIGINT", "FLOAT64": "DOUBLE PRECISION",
            "BOOL": "BOOLEAN", "TIMESTAMP": "TIMESTAMPTZ", "BYTES": "BYTEA"}
# Types of the COPY staging table and of the binary COPY stream (TIMESTAMP as epoch ms).
STAGE_TYPES = {"STRING": "text", "INT64": "int8", "FLOAT64": "float8", "BOOL": "bool",
               "TIMESTAMP": "int8", "BYTES": "bytea"}
LEDGER = "_cx360_batches"
LEDGER_DDL = f"""CREATE TABLE IF NOT EXISTS {LEDGER} (
    batch_id TEXT PRIMARY KEY, created_ms BIGINT NOT NULL, status TEXT NOT NULL,
    ranges TEXT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
OUR_PARAMS = ("schema",)
SINK_ATTEMPTS = 8  # a streaming upsert that lost a deadlock is retried this often


def q(name: str) -> pgsql.Identifier:
    return pgsql.Identifier(name)


def parse_postgres_url(url: str) -> tuple[str, str, str | None]:
    """(libpq URL without our own parameters, ``url`` without its password, schema)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise WarehouseError(f"not a PostgreSQL warehouse URL: {redact(url)!r}")
    if not parts.hostname and not parts.path.strip("/"):
        raise WarehouseError(f"PostgreSQL URL {redact(url)!r} names no host or database")
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in params if k == "schema"), None) or None
    query = urllib.parse.urlencode([(k, v) for k, v in params if k not in OUR_PARAMS])
    libpq = urllib.parse.urlunsplit(parts._replace(query=query))
    return libpq, redact(url), schema


def redact(url: str) -> str:
    """``url`` with any password removed (safe to log or show)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class PostgresWarehouse(Warehouse):
    paramstyle = "format"
    def __init__(self, url: str, read_only: bool = False):
        conninfo, self.url, self.schema = parse_postgres_url(url)
        self.read_only = read_only
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True, application_name="cx360")
        except psycopg.OperationalError as exc:
            # libpq's messages never contain the password; the URL we show has none either.
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise WarehouseError(f"cannot connect to PostgreSQL at {self.url}: {reason}") from None
        self._lock = threading.Lock()
        with self.conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            if self.schema:
                if not read_only:
                    cur.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(q(self.schema)))
                cur.execute(pgsql.SQL("SET search_path TO {}").format(q(self.schema)))
            if read_only:
                cur.execute("SET default_transaction_read_only = on")
            else:
                cur.execute(LEDGER_DDL)

    # -- tables ----------------------------------------------------------------------------
    def ensure_tables(self, specs: Iterable[TableSpec]) -> None:
        with self._lock, self.conn.cursor() as cur:
            for spec in specs:
                columns = [pgsql.SQL("{} {}{}").format(
                    q(c.name), pgsql.SQL(PG_TYPES[c.type]),
                    pgsql.SQL("" if c.nullable else " NOT NULL")) for c in spec.columns]
                create = pgsql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))")
                cur.execute(create.format(q(spec.name), pgsql.SQL(", ").join(columns),
                                          pgsql.SQL(", ").join(q(k) for k in spec.key)))
                cur.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = current_schema() AND table_name = %s",
                            [spec.name])
                existing = {r[0] for r in cur.fetchall()}
                for column in spec.columns:
                    if column.name not in existing:  # additive schema evolution: NULLABLE only
                        add = pgsql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}")
                        cur.execute(add.format(q(spec.name), q(column.name),
                                               pgsql.SQL(PG_TYPES[column.type])))
                if spec.partition_by:
                    brin = pgsql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING brin ({})")
                    cur.execute(brin.format(q(f"{spec.name}_{spec.partition_by}_brin"),
                                            q(spec.name), q(spec.partition_by)))

    def ensure_views(self) -> None:
        """(Re)create the KPI views and their helper functions (sql/postgres_views.sql) in one
        transaction: other sessions see the old views or the new ones."""
        sql = (pathlib.Path(__file__).resolve().parent / "sql" / "postgres_views.sql").read_text()
        with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql)

    def _copy_stage(self, cur: psycopg.Cursor, spec: TableSpec, rows: list[dict],
                    stage: str) -> list[pgsql.Composable]:
        """COPY ``rows`` (binary) into a new TEMP table ``stage`` (``ON COMMIT DROP``); returns
        the SELECT list that reads them with the final types (TIMESTAMP from epoch ms)."""
        names = spec.column_names
        cur.execute(pgsql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            q(stage), pgsql.SQL(", ").join(
                pgsql.SQL("{} {}").format(q(c.name), pgsql.SQL(STAGE_TYPES[c.type]))
                for c in spec.columns)))
        copy_sql = pgsql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            q(stage), pgsql.SQL(", ").join(q(n) for n in names))
        with cur.copy(copy_sql) as copy:
            copy.set_types([STAGE_TYPES[c.type] for c in spec.columns])
            for row in rows:
                copy.write_row([row.get(n) for n in names])
        return [pgsql.SQL("'epoch'::timestamptz + {} * interval '1 millisecond'").format(q(c.name))
                if c.type == "TIMESTAMP" else q(c.name) for c in spec.columns]

    def _upsert(self, cur: psycopg.Cursor, spec: TableSpec, rows: list[dict],
                merge: str | None = None, guard: pgsql.Composable | None = None) -> int:
        """De-duplicate by key, COPY, ``INSERT ... ON CONFLICT (key)`` with the spec's merge
        mode (or ``merge``), the update only ``WHERE guard`` if given. Rows are inserted in
        key order, so two transactions lock shared keys in the same order (no deadlock)."""
        rows = spec.combine(rows)
        if not rows:
            return 0
        merge = merge or spec.merge
        names = spec.column_names
        stage = f"_cx360_stage_{spec.name}"
        selected = self._copy_stage(cur, spec, rows, stage)
        if merge == "ignore":
            action = pgsql.SQL("DO NOTHING")
        elif merge == "add":
            action = pgsql.SQL("DO UPDATE SET ") + pgsql.SQL(", ").join(
                pgsql.SQL("{c} = t.{c} + EXCLUDED.{c}").format(c=q(c)) for c in spec.additive)
        else:
            others = [c for c in names if c not in spec.key]
            action = (pgsql.SQL("DO UPDATE SET ") + pgsql.SQL(", ").join(
                pgsql.SQL("{c} = EXCLUDED.{c}").format(c=q(c)) for c in others)
                if others else pgsql.SQL("DO NOTHING"))
            if guard is not None and others:
                action += pgsql.SQL(" WHERE ") + guard
        cur.execute(pgsql.SQL(
            "INSERT INTO {target} AS t ({cols}) SELECT {selected} FROM {stage} ORDER BY {key} "
            "ON CONFLICT ({key}) {action}").format(
                target=q(spec.name), cols=pgsql.SQL(", ").join(q(n) for n in names),
                selected=pgsql.SQL(", ").join(selected), stage=q(stage),
                key=pgsql.SQL(", ").join(q(k) for k in spec.key), action=action))
        return len(rows)

    # -- the streaming sink (transforms/warehouse/panes.py) --------------------------------
    def _sink(self, work) -> int:
        """``work(cur)`` in one transaction (READ COMMITTED); a deadlock or serialization
        failure between concurrent writers rolls it back and it is retried."""
        if self.read_only:
            raise WarehouseError("read-only warehouse")
        for attempt in range(SINK_ATTEMPTS):
            try:
                with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
                    return work(cur)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == SINK_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
        return 0  # pragma: no cover

    def upsert_panes(self, spec: TableSpec, rows: list[dict]) -> int:
        """``ON CONFLICT (key) DO UPDATE ... WHERE`` the new ``(generation, pane_index)`` is at
        least the stored one. PostgreSQL evaluates the WHERE on the row locked for the update,
        after waiting for a concurrent writer of that key to commit: never against a stale
        version, so concurrent workers cannot overwrite a newer pane."""
        guard = pgsql.SQL(
            "EXCLUDED.generation > COALESCE(t.generation, -1) OR (EXCLUDED.generation = "
            "t.generation AND EXCLUDED.pane_index >= COALESCE(t.pane_index, -1))")
        return self._sink(lambda cur: self._upsert(cur, spec, rows, "replace", guard))

    def upsert_replace(self, spec: TableSpec, rows: list[dict]) -> int:
        """Plain upsert by key: every non-key column from the new row."""
        return self._sink(lambda cur: self._upsert(cur, spec, rows, "replace"))

    def upsert_sessions(self, spec: TableSpec, rows: list[dict]) -> int:
        """A session row replaces every stored row of the same visitor it overlaps unless a
        stored row supersedes it. Writers of the same visitor are serialised by a
        transaction-level advisory lock per (brand, cookie_id), taken in sorted order; each
        later statement (READ COMMITTED) then sees the other writer's committed rows."""
        table = q(spec.name)
        overlaps = pgsql.SQL(
            "t.brand = s.brand AND t.cookie_id = s.cookie_id "
            "AND t.session_start < s.session_end AND t.session_end > s.session_start")
        stored_wins = pgsql.SQL(
            "(t.generation > s.generation OR (t.generation = s.generation "
            "AND t.session_start <= s.session_start AND t.session_end >= s.session_end "
            "AND t.events >= s.events))")
        cols = pgsql.SQL(", ").join(q(n) for n in spec.column_names)

        def work(cur):
            selected = self._copy_stage(cur, spec, rows, "_cx360_sessions_in")
            cur.execute(pgsql.SQL(
                "SELECT DISTINCT hashtextextended(brand || chr(31) || cookie_id, 0) AS h "
                "FROM _cx360_sessions_in ORDER BY h"))
            for (visitor,) in cur.fetchall():
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [visitor])
            cur.execute(pgsql.SQL(
                "CREATE TEMP TABLE _cx360_sessions_new ON COMMIT DROP AS SELECT * FROM "
                "(SELECT {selected} FROM _cx360_sessions_in) AS s WHERE NOT EXISTS "
                "(SELECT 1 FROM {table} t WHERE {overlaps} AND {stored_wins})").format(
                    selected=pgsql.SQL(", ").join(
                        pgsql.SQL("{} AS {}").format(expr, q(name))
                        for expr, name in zip(selected, spec.column_names)),
                    table=table, overlaps=overlaps, stored_wins=stored_wins))
            written = cur.rowcount
            cur.execute(pgsql.SQL("DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM "
                                  "_cx360_sessions_new s WHERE {overlaps})").format(
                                      table=table, overlaps=overlaps))
            cur.execute(pgsql.SQL("INSERT INTO {table} ({cols}) SELECT {cols} FROM "
                                  "_cx360_sessions_new").format(table=table, cols=cols))
            return written

        return self._sink(work)

    def write_batch(self, batch_id: str, rows: dict[str, list[dict]],
                    specs: dict[str, TableSpec], *, on_rejected=None) -> dict[str, int] | None:
        """See the module docstring. ``on_rejected`` is accepted for interface parity with the
        BigQuery backend and never called: PostgreSQL rejects a bad row by failing the whole
        transaction (the batch stays pending), it has no per-row rejection."""
        with self._lock:
            already_applied = False
            written: dict[str, int] = {}
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(f"SELECT status FROM {LEDGER} WHERE batch_id = %s FOR UPDATE",
                            [batch_id])
                status = cur.fetchone()
                if status is None:
                    raise WarehouseError(f"batch {batch_id} was never recorded")
                if status[0] in ("applied", "committed"):
                    already_applied = True
                    raise psycopg.Rollback()
                for name, table_rows in rows.items():
                    written[name] = self._upsert(cur, specs[name], table_rows)
                cur.execute(f"UPDATE {LEDGER} SET status = 'applied', updated_at = now() "
                            "WHERE batch_id = %s", [batch_id])
            return None if already_applied else written

    def seen_event_ids(self, event_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        if not event_ids:
            return {}
        with self._lock, self.conn.cursor() as cur:
            cur.execute('SELECT event_id, topic, "partition", "offset" FROM _cx360_event_ids '
                        "WHERE event_id = ANY(%s)", [list(event_ids)])
            found = cur.fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in found}

    # -- ledger ----------------------------------------------------------------------------
    def record_batch(self, batch: Batch) -> None:
        ranges = json.dumps([list(r) for r in batch.ranges])
        with self._lock, self.conn.cursor() as cur:
            try:
                cur.execute(f"INSERT INTO {LEDGER} (batch_id, created_ms, status, ranges) "
                            "VALUES (%s, %s, %s, %s)",
                            [batch.batch_id, batch.created_ms, batch.status, ranges])
            except psycopg.errors.UniqueViolation:
                raise WarehouseError(f"batch {batch.batch_id} is recorded already") from None

    def batches(self, status: str | None = None) -> list[Batch]:
        sql = f"SELECT batch_id, created_ms, status, ranges FROM {LEDGER}"
        params: list = []
        if status:
            sql += " WHERE status = %s"
            params.append(status)
        with self._lock, self.conn.cursor() as cur:
            try:
                cur.execute(sql + " ORDER BY created_ms, batch_id", params)
            except psycopg.errors.UndefinedTable:  # a read-only view of an empty database
                return []
            rows = cur.fetchall()
        return [Batch(r[0], r[1], r[2], [PartitionRange(*x) for x in json.loads(r[3])])
                for r in rows]

    def set_batch_status(self, batch_id: str, status: str) -> None:
        with self._lock, self.conn.cursor() as cur:
            cur.execute(f"UPDATE {LEDGER} SET status = %s, updated_at = now() "
                        "WHERE batch_id = %s", [status, batch_id])

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock, self.conn.cursor() as cur:
            cur.execute(sql, list(params) if params else None)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def epoch_ms_sql(self, column: str) -> str:
        return f"floor(extract(epoch FROM {column}) * 1000)::bigint"

    def bytes_contain(self, column: str, needle: str) -> tuple[str, list]:
        # 'escape' writes bytes outside printable ASCII as \ooo, the needle the same way
        return (f"strpos(lower(encode({column}, 'escape')), "
                "lower(encode(CAST(? AS bytea), 'escape'))) > 0", [needle.encode()])

    def has_table(self, name: str) -> bool:
        return bool(self.query("SELECT count(*) FROM information_schema.tables WHERE "
                               "table_schema = current_schema() AND table_name = %s",
                               [name])[0][0])

    def query_records(self, sql: str, params: Sequence = ()) -> list[dict]:
        with self._lock, self.conn.cursor() as cur:
            cur.execute(sql, list(params) if params else None)
            if not cur.description:
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def execute_transaction(self, statements: Sequence[tuple[str, Sequence]]) -> list[int]:
        counts = []
        with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
            for sql, params in statements:
                cur.execute(sql.replace("?", "%s"), list(params) or None)
                counts.append(max(cur.rowcount, 0))
        return counts

    def close(self) -> None:
        conn, self.conn = getattr(self, "conn", None), None
        if conn is not None:
            conn.close()
