"""BigQuery warehouse: streaming inserts into staging tables, then one transaction per batch.

URL: ``bigquery://PROJECT/DATASET[?endpoint=http://127.0.0.1:9050&location=EU&...]`` (or
``bigquery:PROJECT.DATASET[?...]``).
``endpoint`` (or the environment variable ``CX360_BQ_ENDPOINT``) points the client at another
server, e.g. the local-bigquery emulator, with anonymous credentials; without it the client uses
Application Default Credentials (``gcloud auth application-default login``, a service account
key in ``GOOGLE_APPLICATION_CREDENTIALS``, or the worker's metadata server on Dataflow/GCE).
Other options: ``location`` (of a dataset this backend creates; default US),
``rows_per_request`` (streaming insert request size, default 500 rows, and never more than
~9 MB), ``threads`` (parallel insert requests, default 4), ``staging_expiration_hours``
(default 24).

Table layout
------------
Each spec becomes a table with the spec's columns (NOT NULL -> REQUIRED), partitioned by DAY on
``partition_by`` (a TIMESTAMP column) and clustered by ``cluster_by`` (at most 4 columns). Beside
it lives a staging table ``_cx360_stage_<table>``: the same columns and modes plus
``_cx360_stage_id``, ``_cx360_row_id`` and ``_cx360_staged_at``; HOUR-partitioned on
``_cx360_staged_at`` with a partition expiration (rows stream into it and are never modified:
streamed rows cannot be changed by DML while in the streaming buffer, so staging only ever
expires) and clustered by ``_cx360_stage_id``. The ledger is ``_cx360_batches``.
Additive schema evolution: a column that is in the spec but not in the table is added to the
final and the staging table as NULLABLE with a table patch (BigQuery can add NULLABLE columns
only). On real BigQuery streaming inserts may reject a just-added column ("no such field") for
a few minutes; such rejections are retried for 10 minutes after this process added the column.

Write path (``write_batch``) and what it guarantees
--------------------------------------------------
1. Rows are de-duplicated by key per table (``TableSpec.combine``). A *stage id* is a SHA-256 of
   the batch id and every row's content (independent of row order), so the same batch with the
   same rows always has the same stage id, and a batch whose rows changed (a re-run with rows
   removed or dead letters added) gets a new one.
2. Every row is streamed (``tabledata.insertAll``, ``skipInvalidRows=true``) into the staging
   table with the insertId ``sha256(stage id, table, key)``: deterministic, so a request that is
   retried after a timeout or a lost response, or a re-run of the same batch within BigQuery's
   de-duplication window (about a minute, best effort), lands once; a duplicate that slips
   through anyway has the same ``_cx360_row_id`` and is dropped when the stage is read. Requests
   are retried with exponential backoff and jitter on transient errors (HTTP 429 and 5xx,
   connection errors, reasons backendError / rateLimitExceeded / internalError / badGateway),
   never on ``invalid``; rows failing with a transient per-row reason (``stopped``, ``timeout``,
   ``backendError``) are re-sent.
3. Per-row errors: rows BigQuery rejects as ``invalid`` are collected as :class:`RejectedRow`
   (table, the row as given, BigQuery's errors with its message, insertId). Then either
   * ``on_rejected`` was given: it is called once with all rejected rows and returns more rows
     ``{table: [rows]}`` for the same batch (typically ``dead_letters`` rows made by
     :func:`rejected_to_dead_letters`); they are staged under the same stage id and the batch
     goes on with the accepted rows plus those; ``write_batch`` counts them in its result; or
   * it was not: :class:`RejectedRowsError` is raised carrying the rejected rows; nothing is
     applied, the batch stays 'pending' (the staged good rows are simply left to expire). The
     caller can dead-letter the rows and write the batch again without them.
   (If the batch turns out to be applied already, neither happens: ``None`` is returned.)
4. One multi-statement transaction (one query job): ``BEGIN TRANSACTION``; set the ledger row
   to 'applied' unless it is 'applied' or 'committed' already -- if no row changed,
   ``ROLLBACK TRANSACTION`` and report 'skipped' (``None`` is returned: the batch was applied
   before, possibly concurrently) or 'missing' (WarehouseError: never recorded); per table, read
   the stage (``_cx360_stage_id = @stage``, one row per ``_cx360_row_id``) and merge it into the
   final table -- ``add``: ``UPDATE T SET c = T.c + S.c FROM stage S`` on matching keys;
   ``replace``: ``UPDATE`` every non-key column; then for every mode ``INSERT`` the keys not yet
   present (``ignore`` only inserts); ``COMMIT TRANSACTION``. A failing statement makes
   BigQuery (and the emulator) roll the whole transaction back, so a batch is in the final
   tables entirely or not at all, together with its ledger status, and re-running an applied
   batch changes nothing (its rows may be streamed to staging again, which is harmless): an
   exactly-once effect on every final table even when requests and batches are retried.
   Concurrent writers of one batch are serialised by BigQuery's conflict detection on the
   ledger row (the loser aborts, is retried, and then sees 'applied'). The job is retried on
   transient errors; if a retry finds the batch applied after this call's own attempt failed in
   transit, that attempt committed and the rows are reported as written.

Why UPDATE + INSERT and not a MERGE statement: on the emulator (local-bigquery 0.3.2) a MERGE
inside ``BEGIN TRANSACTION`` fails ("Current transaction is aborted (please ROLLBACK)": its MERGE
opens a nested DuckDB transaction), while UPDATE/INSERT/DELETE, ``@@row_count``, IF/ELSE and
rollback-on-error work inside transactions there. The UPDATE + INSERT pair inside one
transaction has exactly a MERGE's effect here (keys are unique on both sides), is valid on real
BigQuery, and is what the contract suite tests. A MERGE statement outside a transaction works on
the emulator, but would lose the atomicity with the ledger and with the other tables.

The streaming sink (``upsert_panes`` / ``upsert_sessions`` / ``upsert_replace``, called by
transforms/warehouse/panes.py for ``cx360 stream``) stages the same way and applies in one
transaction without a ledger row: guarded UPDATE + INSERT (panes, replace) or DELETE + INSERT
(sessions). Its first statement updates the table's row in ``_cx360_sink_locks``, so two sink
transactions on one table always conflict (BigQuery does not abort transactions that only
append) and the loser is retried; see docs/streaming.md.

When ``partition_by`` is part of the key, the final-table side of the merge is restricted to
the batch's partition range (``T.p BETWEEN min AND max``) so BigQuery prunes partitions.

``query(sql, params)`` runs GoogleSQL with positional ``?`` parameters in the warehouse dataset
(unqualified table names resolve there); quote identifiers with backticks (``partition`` is a
reserved word).
"""
from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import logging
import math
import os
import pathlib
import random
import re
import time
import urllib.parse
from typing import Callable, Iterable, Sequence

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from cx360.transforms.kafka_io import PartitionRange
from cx360.transforms.warehouse.base import Batch, Warehouse, WarehouseError
from cx360.transforms.warehouse.spec import TableSpec

log = logging.getLogger(__name__)

BQ_TYPES = {"STRING": "STRING", "INT64": "INT64", "FLOAT64": "FLOAT64", "BOOL": "BOOL",
            "TIMESTAMP": "TIMESTAMP", "BYTES": "BYTES"}
CLUSTERABLE = {"STRING", "INT64", "BOOL", "TIMESTAMP"}
LEDGER = "_cx360_batches"
SINK_LOCKS = "_cx360_sink_locks"  # one row per table the streaming sink writes
STAGE_PREFIX = "_cx360_stage_"
#: The label of a table with a hash of the schema it was created or last patched for.
SCHEMA_LABEL = "cx360_schema"
#: A view holding a hash of sql/bigquery_views.sql as last created (see ensure_views).
VIEWS_STAMP = "_cx360_views_version"
STAGE_ID, ROW_ID, STAGED_AT = "_cx360_stage_id", "_cx360_row_id", "_cx360_staged_at"
# Staged rows of a batch are read back from partitions no older than this (the insertId
# de-duplication window is about a minute; an older duplicate is simply staged again).
STAGE_LOOKBACK = dt.timedelta(hours=2)
TRANSIENT_HTTP = {429, 500, 502, 503, 504}
TRANSIENT_REASONS = {"backendError", "rateLimitExceeded", "internalError", "badGateway"}
ROW_RETRY_REASONS = TRANSIENT_REASONS | {"stopped", "timeout"}
NEW_COLUMN_GRACE_S = 600
MAX_REQUEST_BYTES = 9_000_000
HTTP_TIMEOUT_S = 120  # per HTTP request: a hung server becomes a (retried) timeout
ID_CHUNK = 10_000


# -- errors and rejected rows -----------------------------------------------------------------
@dataclasses.dataclass
class RejectedRow:
    """A row BigQuery refused, with BigQuery's own per-row errors (reason, location, message)."""

    table: str
    row: dict
    errors: list[dict]
    row_id: str = ""

    @property
    def reason(self) -> str:
        return next((e.get("reason") for e in self.errors if e.get("reason")), "invalid")

    @property
    def message(self) -> str:
        """BigQuery's message(s), e.g. ``Cannot convert value to integer (bad value): many``."""
        return "; ".join(e.get("message", "") for e in self.errors if e.get("message")) \
            or self.reason


class RejectedRowsError(WarehouseError):
    """Rows of a batch were rejected by BigQuery and no ``on_rejected`` handler took them.
    Nothing was applied; the batch is still 'pending'. ``rejected`` lists the rows."""

    def __init__(self, batch_id: str, rejected: list[RejectedRow]):
        self.batch_id = batch_id
        self.rejected = rejected
        first = rejected[0]
        super().__init__(f"batch {batch_id}: {len(rejected)} row(s) rejected by BigQuery, "
                         f"first in {first.table}: {first.message}")


def rejected_to_dead_letters(rejected: Iterable[RejectedRow], batch_id: str | None,
                             failed_at_ms: int) -> list[dict]:
    """``dead_letters`` rows (spec DEAD_LETTERS) for rows the warehouse refused: stage 'write',
    reason ``warehouse_rejected``, detail = ``BigQuery <its reason>: <its message>``, value =
    the row as JSON. A row that came from no Kafka record has topic ``warehouse:<table>`` and
    partition/offset -1; the id is ``write/<table>/<insertId>`` so a re-run replaces rather
    than duplicates it."""
    out = []
    for r in rejected:
        out.append({
            "dead_letter_id": f"write/{r.table}/{r.row_id}", "topic": f"warehouse:{r.table}",
            "partition": -1, "offset": -1, "kafka_timestamp": None, "key": None,
            "value": json.dumps(_plain(r.row), sort_keys=True).encode(), "stage": "write",
            "reason": "warehouse_rejected", "detail": f"BigQuery {r.reason}: {r.message}",
            "schema_id": None,
            "batch_id": batch_id, "failed_at": failed_at_ms})
    return out


# -- retries ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits a random time in [d/2, d], with
    d = min(max_s, initial_s * multiplier**n); gives up after ``attempts`` tries or
    ``deadline_s`` seconds."""

    initial_s: float = 0.5
    max_s: float = 32.0
    multiplier: float = 2.0
    attempts: int = 10
    deadline_s: float = 300.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def error_reasons(exc: BaseException) -> set[str]:
    reasons = set()
    for error in getattr(exc, "errors", None) or []:
        if isinstance(error, dict) and error.get("reason"):
            reasons.add(error["reason"])
    return reasons


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: HTTP 429/5xx, connection problems, or a transient BigQuery reason; never
    an ``invalid`` request."""
    reasons = error_reasons(exc)
    if "invalid" in reasons:
        return False
    if reasons & TRANSIENT_REASONS:
        return True
    if isinstance(exc, gexc.GoogleAPICallError):
        return exc.code in TRANSIENT_HTTP
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout,
                            requests.exceptions.ChunkedEncodingError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError, concurrent.futures.TimeoutError))


def _concurrent_update(exc: BaseException) -> bool:
    """A transaction lost a conflict with a concurrent one: BigQuery's "Transaction is aborted
    due to concurrent update" / "Could not serialize access"; the local-bigquery emulator (on
    DuckLake) says "Failed to commit DuckLake transaction" (HTTP 400). Retried."""
    text = str(exc).lower()
    return ("concurrent update" in text or "could not serialize access" in text
            or "failed to commit ducklake transaction" in text)


# -- values -----------------------------------------------------------------------------------
def _ms_to_text(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=ms)


def _json_value(type_: str, value):
    """A Python row value as insertAll JSON. Values of the wrong Python type are passed on
    unchanged so that BigQuery rejects the row with its own message."""
    if value is None:
        return None
    if type_ == "TIMESTAMP" and isinstance(value, int) and not isinstance(value, bool):
        return _ms_to_text(value)
    if type_ == "INT64" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # exact beyond 2**53, as google-cloud-bigquery's own insert_rows does
    if type_ == "BYTES" and isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if type_ == "FLOAT64" and isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _plain(row: dict) -> dict:
    """A row made JSON-safe for a dead letter's value (bytes as base64)."""
    return {k: (base64.b64encode(bytes(v)).decode("ascii")
                if isinstance(v, (bytes, bytearray, memoryview)) else v) for k, v in row.items()}


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _sha(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


def _param(name: str | None, value) -> bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter:
    if isinstance(value, (list, tuple)):
        kind = _param(None, value[0]).type_ if value else "STRING"
        return bigquery.ArrayQueryParameter(name, kind, list(value))
    if isinstance(value, bool):
        kind = "BOOL"
    elif isinstance(value, int):
        kind = "INT64"
    elif isinstance(value, float):
        kind = "FLOAT64"
    elif isinstance(value, decimal.Decimal):
        kind = "NUMERIC"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        kind, value = "BYTES", bytes(value)
    elif isinstance(value, dt.datetime):
        kind = "TIMESTAMP"
    elif isinstance(value, dt.date):
        kind = "DATE"
    else:
        kind = "STRING"
    return bigquery.ScalarQueryParameter(name, kind, value)


def bq_quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def view_name(statement: str) -> str:
    """The view a ``CREATE OR REPLACE VIEW `project.dataset.name` AS ...`` statement makes."""
    match = re.match(r"CREATE\s+OR\s+REPLACE\s+VIEW\s+`([^`]+)`", statement, re.IGNORECASE)
    if match is None:
        raise WarehouseError(f"not a CREATE OR REPLACE VIEW statement: {statement[:80]!r}")
    return match.group(1).rsplit(".", 1)[-1]


def schema_stamp(fields: Sequence[bigquery.SchemaField],
                 partition: bigquery.TimePartitioning | None,
                 cluster_by: Sequence[str] | None) -> str:
    """A label value (<= 63 of ``[a-z0-9_-]``) that changes with the columns a table needs."""
    text = json.dumps([[f.name, f.field_type, f.mode] for f in fields]
                      + [partition.field if partition else None, list(cluster_by or ())])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def views_stamp(statements: Sequence[str]) -> str:
    return hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()[:32]


def view_statements(dataset: str) -> list[str]:
    """The CREATE VIEW statements of sql/bigquery_views.sql for ``project.dataset``."""
    text = (pathlib.Path(__file__).resolve().parent / "sql" / "bigquery_views.sql").read_text()
    text = text.replace("${dataset}", dataset)
    statements = []
    for chunk in re.split(r";[ \t]*\n", text):
        body = "\n".join(line for line in chunk.splitlines()
                         if not line.lstrip().startswith("--")).strip()
        if body:
            statements.append(body)
    return statements


# -- URL --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BigQueryUrl:
    project: str
    dataset: str
    endpoint: str | None = None
    location: str | None = None
    rows_per_request: int = 500
    threads: int = 4
    staging_expiration_hours: int = 24

    @property
    def url(self) -> str:
        options = {k: v for k, v in (("endpoint", self.endpoint), ("location", self.location))
                   if v}
        query = f"?{urllib.parse.urlencode(options, safe=':/')}" if options else ""
        return f"bigquery://{self.project}/{self.dataset}{query}"


def parse_bigquery_url(url: str) -> BigQueryUrl:
    """``bigquery://PROJECT/DATASET[?options]``; ``bigquery:PROJECT.DATASET[?options]`` too."""
    if url.startswith("bigquery://"):
        rest, _, query = url[len("bigquery://"):].partition("?")
        project, _, dataset = rest.strip("/").partition("/")
    elif url.startswith("bigquery:"):
        rest, _, query = url[len("bigquery:"):].partition("?")
        project, _, dataset = rest.rpartition(".")  # a dataset name has no dots, a project may
    else:
        raise WarehouseError(f"not a BigQuery warehouse URL: {url!r}")
    if not project or not dataset or "/" in dataset:
        raise WarehouseError(f"BigQuery URL {url!r} must be bigquery://PROJECT/DATASET")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=False))
    unknown = set(options) - {"endpoint", "location", "rows_per_request", "threads",
                              "staging_expiration_hours"}
    if unknown:
        raise WarehouseError(f"BigQuery URL {url!r}: unknown option(s) {sorted(unknown)}")
    try:
        return BigQueryUrl(
            project=project, dataset=dataset,
            endpoint=options.get("endpoint") or os.environ.get("CX360_BQ_ENDPOINT") or None,
            location=options.get("location"),
            rows_per_request=int(options.get("rows_per_request", 500)),
            threads=int(options.get("threads", 4)),
            staging_expiration_hours=int(options.get("staging_expiration_hours", 24)))
    except ValueError as exc:
        raise WarehouseError(f"BigQuery URL {url!r}: {exc}") from None


def make_client(cfg: BigQueryUrl) -> bigquery.Client:
    if cfg.endpoint:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(project=cfg.project, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=cfg.endpoint),
                               location=cfg.location)
    try:
        return bigquery.Client(project=cfg.project, location=cfg.location)
    except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise WarehouseError(f"no Google credentials for BigQuery ({exc}); run `gcloud auth "
                             "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS, "
                             "or give an endpoint for an emulator") from None


# -- the backend ------------------------------------------------------------------------------
@dataclasses.dataclass
class _Staged:
    table: str
    row: dict
    row_id: str
    json_row: dict


class BigQueryWarehouse(Warehouse):
    def __init__(self, url: str, read_only: bool = False, *, client: bigquery.Client | None = None,
                 retry: RetryPolicy | None = None):
        self.config = parse_bigquery_url(url)
        self.url = self.config.url
        self.read_only = read_only
        self.retry = retry or RetryPolicy()
        self.client = client or make_client(self.config)
        self.dataset = f"{self.config.project}.{self.config.dataset}"
        self._created: dict[str, float] = {}      # table -> when this process created it
        self._added: dict[tuple[str, str], float] = {}  # (table, column) -> when added
        self._locked: set[str] = set()  # tables whose sink lock row this process ensured
        if not read_only:
            self._call(self._ensure_dataset)
            self._ensure_table(LEDGER, [
                bigquery.SchemaField("batch_id", "STRING", mode="REQUIRED"),
                bigquery.SchemaField("created_ms", "INT64", mode="REQUIRED"),
                bigquery.SchemaField("status", "STRING", mode="REQUIRED"),
                bigquery.SchemaField("ranges", "STRING", mode="REQUIRED"),
                bigquery.SchemaField("updated_at", "TIMESTAMP")], cluster_by=["batch_id"])

    # -- plumbing ------------------------------------------------------------------------------
    def table_id(self, name: str) -> str:
        return f"{self.dataset}.{name}"

    def _ref(self, name: str) -> str:
        return bq_quote(self.table_id(name))

    def _call(self, fn: Callable, *args, retry_on: Callable[[BaseException], bool] = is_transient,
              what: str = "BigQuery call", **kwargs):
        started, attempt = time.monotonic(), 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                attempt += 1
                if (not retry_on(exc) or attempt >= self.retry.attempts
                        or time.monotonic() - started > self.retry.deadline_s):
                    raise
                wait = self.retry.delay(attempt - 1)
                log.warning("%s failed (%s: %s); retry %d in %.2f s", what, type(exc).__name__,
                            (str(exc).splitlines() or [""])[0][:200], attempt, wait)
                time.sleep(wait)

    def _job(self, sql: str, params: Sequence = (), *,
             retry_on: Callable[[BaseException], bool] = is_transient):
        config = bigquery.QueryJobConfig(query_parameters=list(params),
                                         default_dataset=self.dataset)

        def run():  # jobs.query: one round trip for short queries, polling for long ones
            result = self.client.query_and_wait(sql, job_config=config, job_retry=None,
                                                api_timeout=HTTP_TIMEOUT_S)
            return list(result), result

        return self._call(run, retry_on=retry_on, what="query job")

    def _ensure_dataset(self):
        dataset = bigquery.Dataset(self.dataset)
        if self.config.location:
            dataset.location = self.config.location
        self.client.create_dataset(dataset, exists_ok=True, timeout=HTTP_TIMEOUT_S)

    def _listed_tables(self) -> dict[str, dict]:
        """table -> labels, for every table and view of the dataset (one ``tables.list``)."""
        return {t.table_id: dict(t.labels or {}) for t in self._call(
            self.client.list_tables, self.dataset, timeout=HTTP_TIMEOUT_S, what="list tables")}

    def _ensure_table(self, name: str, fields: list[bigquery.SchemaField], *,
                      partition: bigquery.TimePartitioning | None = None,
                      cluster_by: list[str] | None = None,
                      listed: dict[str, dict] | None = None) -> None:
        """Create table ``name`` or add the NULLABLE columns it lacks.

        Tables are labelled with a hash of the schema they were created or last patched for
        (:data:`SCHEMA_LABEL`). With ``listed`` (the dataset's tables and labels, from one
        ``tables.list``) a table whose label matches costs no request at all and a missing one
        is created without first asking for it: each request is a round trip, and a
        micro-batch start checks about 70 tables (each with its staging table)."""
        stamp = schema_stamp(fields, partition, cluster_by)
        if listed is not None and listed.get(name, {}).get(SCHEMA_LABEL) == stamp:
            return
        table = None
        if listed is None or name in listed:
            try:
                table = self._call(self.client.get_table, self.table_id(name),
                                   timeout=HTTP_TIMEOUT_S, what=f"get table {name}")
            except gexc.NotFound:
                pass
        if table is None:
            table = bigquery.Table(self.table_id(name), schema=fields)
            table.time_partitioning = partition
            table.clustering_fields = cluster_by or None
            table.labels = {SCHEMA_LABEL: stamp}
            try:
                self._call(self.client.create_table, table, timeout=HTTP_TIMEOUT_S,
                           what=f"create table {name}")
                self._created[name] = time.monotonic()
                return
            except gexc.Conflict:  # created concurrently
                table = self.client.get_table(self.table_id(name))
        have = {f.name.casefold() for f in table.schema}
        missing = [f for f in fields if f.name.casefold() not in have]
        if missing:  # additive schema evolution: BigQuery adds NULLABLE columns only
            table.schema = list(table.schema) + [
                bigquery.SchemaField(f.name, f.field_type, mode="NULLABLE") for f in missing]
        if missing or (table.labels or {}).get(SCHEMA_LABEL) != stamp:
            table.labels = {**(table.labels or {}), SCHEMA_LABEL: stamp}
            self._call(self.client.update_table, table, ["schema", "labels"],
                       timeout=HTTP_TIMEOUT_S, what=f"patch table {name}")
            now = time.monotonic()
            for f in missing:
                self._added[(name, f.name)] = now
                log.info("added NULLABLE column %s.%s", name, f.name)

    @staticmethod
    def _fields(spec: TableSpec) -> list[bigquery.SchemaField]:
        return [bigquery.SchemaField(c.name, BQ_TYPES[c.type],
                                     mode="NULLABLE" if c.nullable else "REQUIRED",
                                     description=c.doc or None) for c in spec.columns]

    # -- tables ----------------------------------------------------------------------------
    def ensure_tables(self, specs: Iterable[TableSpec]) -> None:
        listed = self._listed_tables()
        for spec in specs:
            partition = None
            if spec.partition_by:
                if spec.column(spec.partition_by).type != "TIMESTAMP":
                    raise WarehouseError(f"table {spec.name}: BigQuery partitions by a TIMESTAMP "
                                         f"column, {spec.partition_by} is not one")
                partition = bigquery.TimePartitioning(
                    type_=bigquery.TimePartitioningType.DAY, field=spec.partition_by)
            cluster = list(spec.cluster_by)
            bad = [c for c in cluster if spec.column(c).type not in CLUSTERABLE]
            if len(cluster) > 4 or bad:
                raise WarehouseError(f"table {spec.name}: BigQuery clusters by at most 4 columns "
                                     f"of types {sorted(CLUSTERABLE)} (got {cluster})")
            fields = self._fields(spec)
            self._ensure_table(spec.name, fields, partition=partition, cluster_by=cluster,
                               listed=listed)
            self._ensure_table(
                STAGE_PREFIX + spec.name,
                fields + [bigquery.SchemaField(STAGE_ID, "STRING", mode="REQUIRED"),
                          bigquery.SchemaField(ROW_ID, "STRING", mode="REQUIRED"),
                          bigquery.SchemaField(STAGED_AT, "TIMESTAMP", mode="REQUIRED")],
                partition=bigquery.TimePartitioning(
                    type_=bigquery.TimePartitioningType.HOUR, field=STAGED_AT,
                    expiration_ms=self.config.staging_expiration_hours * 3_600_000),
                cluster_by=[STAGE_ID], listed=listed)

    # -- streaming inserts -----------------------------------------------------------------
    def insert_rows(self, table: str, json_rows: Sequence[dict], row_ids: Sequence[str]
                    ) -> list[tuple[int, list[dict]]]:
        """Batched streaming insert (``insertAll``) of JSON rows with the given insertIds into
        ``table`` of this dataset: requests of at most ``rows_per_request`` rows and ~9 MB, sent
        in parallel, each retried with backoff on transient errors; rows that fail with a
        transient per-row reason are re-sent. Returns ``(index, errors)`` for every row BigQuery
        rejected (``invalid``), with BigQuery's error dicts."""
        chunks, chunk, size = [], [], 0
        limit = max(1, self.config.rows_per_request)
        for index, (row, row_id) in enumerate(zip(json_rows, row_ids)):
            row_size = len(_canonical(row)) + len(row_id) + 32
            if chunk and (len(chunk) >= limit or size + row_size > MAX_REQUEST_BYTES):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append((index, row, row_id))
            size += row_size
        if chunk:
            chunks.append(chunk)
        if not chunks:
            return []
        if len(chunks) == 1 or self.config.threads <= 1:
            results = [self._insert_chunk(table, c) for c in chunks]
        else:
            with concurrent.futures.ThreadPoolExecutor(min(self.config.threads, len(chunks))) as ex:
                results = list(ex.map(lambda c: self._insert_chunk(table, c), chunks))
        return sorted(item for result in results for item in result)

    def _retry_row(self, table: str, errors: list[dict]) -> bool:
        reasons = {e.get("reason") for e in errors}
        if reasons <= ROW_RETRY_REASONS and reasons:
            return True
        now = time.monotonic()  # a just-added column may be unknown to streaming for minutes
        return all(e.get("reason") == "invalid" and "no such field" in e.get("message", "")
                   and now - self._added.get((table, e.get("location", "")), -1e9)
                   < NEW_COLUMN_GRACE_S for e in errors)

    def _insert_chunk(self, table: str, chunk: list[tuple[int, dict, str]]
                      ) -> list[tuple[int, list[dict]]]:
        table_id = self.table_id(table)

        def retry_on(exc: BaseException) -> bool:  # a brand-new table may 404 for a moment
            return is_transient(exc) or (
                isinstance(exc, gexc.NotFound)
                and time.monotonic() - self._created.get(table, -1e9) < NEW_COLUMN_GRACE_S)

        pending, rejected, started, attempt = chunk, [], time.monotonic(), 0
        while pending:
            errors = self._call(
                self.client.insert_rows_json, table_id, [r for _, r, _ in pending],
                row_ids=[i for _, _, i in pending], skip_invalid_rows=True, retry=None,
                timeout=HTTP_TIMEOUT_S,
                retry_on=retry_on, what=f"insertAll {table}")
            again = []
            for error in errors:
                index, row, row_id = pending[error["index"]]
                if self._retry_row(table, error.get("errors", [])):
                    again.append((index, row, row_id))
                else:
                    rejected.append((index, error.get("errors", [])))
            pending = again
            if pending:
                attempt += 1
                if attempt >= self.retry.attempts or \
                        time.monotonic() - started > self.retry.deadline_s:
                    rejected.extend((index, [{"reason": "timeout", "message":
                                              "row still failing after retries"}])
                                    for index, _, _ in pending)
                    break
                time.sleep(self.retry.delay(attempt - 1))
        return rejected

    def _plan(self, batch_id: str, rows: dict[str, list[dict]], specs: dict[str, TableSpec],
              stage_id: str | None = None) -> tuple[str, dict[str, list[_Staged]]]:
        """Rows de-duplicated by key and converted to insertAll JSON, with their insertIds.
        The stage id is computed from the batch id and the rows unless given."""
        converted: dict[str, list[tuple[dict, dict, str]]] = {}
        digests = []
        for name, table_rows in rows.items():
            spec = specs[name]
            types = [(c.name, c.type) for c in spec.columns]
            items = []
            for row in spec.combine(table_rows):
                json_row = {n: _json_value(t, row.get(n)) for n, t in types}
                items.append((row, json_row, _canonical([row.get(k) for k in spec.key])))
                if stage_id is None:
                    digests.append(_sha(name, _canonical(json_row)))
            converted[name] = items
        if stage_id is None:
            stage_id = _sha(batch_id, *sorted(digests))[:40]
        return stage_id, {
            name: [_Staged(name, row, _sha(stage_id, name, key)[:40], json_row)
                   for row, json_row, key in items] for name, items in converted.items()}

    def _stage(self, stage_id: str, plan: dict[str, list[_Staged]], staged_at: str
               ) -> tuple[dict[str, int], list[RejectedRow]]:
        accepted, rejected = {}, []
        for name, items in plan.items():
            json_rows = [dict(s.json_row, **{STAGE_ID: stage_id, ROW_ID: s.row_id,
                                             STAGED_AT: staged_at}) for s in items]
            failures = self.insert_rows(STAGE_PREFIX + name, json_rows, [s.row_id for s in items])
            for index, errors in failures:
                s = items[index]
                rejected.append(RejectedRow(name, s.row, errors, s.row_id))
            accepted[name] = len(items) - len(failures)
        return accepted, rejected


    # -- merge statements (shared by write_batch and the streaming sink) ------------------
    def _staged_source(self, spec: TableSpec, extra: Sequence[str] = ()) -> str:
        """The rows of one stage (``@stage_id``) of ``spec``, one per ``_cx360_row_id``."""
        cols = ", ".join(bq_quote(c) for c in [*spec.column_names, *extra])
        return (f"(SELECT {cols} FROM {self._ref(STAGE_PREFIX + spec.name)} "
                f"WHERE {STAGE_ID} = @stage_id AND {STAGED_AT} >= @since "
                f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {ROW_ID}) = 1)")

    @staticmethod
    def _prune(spec: TableSpec, items: list[_Staged], params: list, i: int) -> str:
        """``AND T.p BETWEEN @pmin_i AND @pmax_i`` when the partition column is in the key."""
        if not (spec.partition_by and spec.partition_by in spec.key):
            return ""
        values = [s.row.get(spec.partition_by) for s in items]
        if not values or not all(isinstance(v, int) for v in values):
            return ""
        params += [bigquery.ScalarQueryParameter(f"pmin_{i}", "TIMESTAMP",
                                                 _ms_to_datetime(min(values))),
                   bigquery.ScalarQueryParameter(f"pmax_{i}", "TIMESTAMP",
                                                 _ms_to_datetime(max(values)))]
        return f" AND T.{bq_quote(spec.partition_by)} BETWEEN @pmin_{i} AND @pmax_{i}"

    @staticmethod
    def _replace_sets(spec: TableSpec) -> str:
        return ", ".join(f"{bq_quote(c)} = S.{bq_quote(c)}"
                         for c in spec.column_names if c not in spec.key)

    def _update_insert(self, spec: TableSpec, items: list[_Staged], params: list, i: int,
                       sets: str, guard: str = "") -> list[str]:
        """UPDATE the stored rows of the staged keys (``sets``, only where ``guard`` holds),
        then INSERT the keys not stored yet: a MERGE's effect (keys unique on both sides)."""
        col_list = ", ".join(bq_quote(c) for c in spec.column_names)
        keys = " AND ".join(f"T.{bq_quote(k)} = S.{bq_quote(k)}" for k in spec.key)
        prune = self._prune(spec, items, params, i)
        target, source = self._ref(spec.name), self._staged_source(spec)
        statements = []
        if sets:
            statements.append(f"UPDATE {target} AS T SET {sets} FROM {source} AS S "
                              f"WHERE {keys}{prune}{f' AND ({guard})' if guard else ''};")
        statements.append(
            f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM {source} AS S "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} AS T WHERE {keys}{prune});")
        return statements

    # -- the batch write -------------------------------------------------------------------
    def write_batch(self, batch_id: str, rows: dict[str, list[dict]],
                    specs: dict[str, TableSpec], *,
                    on_rejected: Callable[[list[RejectedRow]], dict[str, list[dict]]] | None = None
                    ) -> dict[str, int] | None:
        """Stage, then apply in one transaction (module docstring). Returns rows written per
        table (rows accepted, after de-duplication by key), or None if the batch had been
        applied already. Raises RejectedRowsError if rows were rejected and ``on_rejected`` is
        None (or rejected the rows it returned too)."""
        started = dt.datetime.now(dt.timezone.utc)
        staged_at = started.isoformat()
        stage_id, plan = self._plan(batch_id, rows, specs)
        written, rejected = self._stage(stage_id, plan, staged_at)
        if rejected:
            status = self._batch_status(batch_id)  # rare path: no handler for an applied batch
            if status is None:
                raise WarehouseError(f"batch {batch_id} was never recorded")
            if status in ("applied", "committed"):
                return None
            if on_rejected is None:
                raise RejectedRowsError(batch_id, rejected)
            extra = on_rejected(list(rejected)) or {}
            _, extra_plan = self._plan(batch_id, extra, specs, stage_id=stage_id)
            extra_written, extra_rejected = self._stage(stage_id, extra_plan, staged_at)
            if extra_rejected:
                raise RejectedRowsError(batch_id, extra_rejected)
            for name, count in extra_written.items():
                written[name] = written.get(name, 0) + count
            for name, items in extra_plan.items():
                plan.setdefault(name, []).extend(items)
        outcome = self._apply(batch_id, stage_id, plan, specs, started - STAGE_LOOKBACK)
        if outcome == "missing":
            raise WarehouseError(f"batch {batch_id} was never recorded")
        return written if outcome == "applied" else None

    def _apply(self, batch_id: str, stage_id: str, plan: dict[str, list[_Staged]],
               specs: dict[str, TableSpec], since: dt.datetime) -> str:
        params = [bigquery.ScalarQueryParameter("batch_id", "STRING", batch_id),
                  bigquery.ScalarQueryParameter("stage_id", "STRING", stage_id),
                  bigquery.ScalarQueryParameter("since", "TIMESTAMP", since)]
        statements = []
        for i, (name, items) in enumerate(sorted(plan.items())):
            if not items:
                continue
            spec = specs[name]
            if spec.merge == "add":
                sets = ", ".join(f"{bq_quote(c)} = T.{bq_quote(c)} + S.{bq_quote(c)}"
                                 for c in spec.additive)
            elif spec.merge == "replace":
                sets = self._replace_sets(spec)
            else:
                sets = ""
            statements += self._update_insert(spec, items, params, i, sets)
        body = "\n  ".join(statements)
        # The ledger row is read inside the transaction: 'missing' (never recorded), 'skipped'
        # (applied already: nothing changes), or 'applied' by this transaction.
        script = f"""BEGIN TRANSACTION;
UPDATE {self._ref(LEDGER)} SET status = 'applied', updated_at = CURRENT_TIMESTAMP()
WHERE batch_id = @batch_id AND status NOT IN ('applied', 'committed');
IF @@row_count = 0 THEN
  ROLLBACK TRANSACTION;
  SELECT IF(EXISTS(SELECT 1 FROM {self._ref(LEDGER)} WHERE batch_id = @batch_id),
            'skipped', 'missing') AS outcome;
ELSE
  {body}
  COMMIT TRANSACTION;
  SELECT 'applied' AS outcome;
END IF;"""
        failed_once = []

        def retry_on(exc: BaseException) -> bool:
            transient = is_transient(exc) or _concurrent_update(exc)
            if transient:
                failed_once.append(exc)
            return transient

        result, _ = self._job(script, params, retry_on=retry_on)
        outcome = result[0][0] if result else "missing"
        # 'skipped' after our own attempt failed in transit most likely means that attempt
        # committed: report the rows as written by this call.
        if outcome == "skipped" and failed_once:
            return "applied"
        return outcome

    # -- the streaming sink (transforms/warehouse/panes.py) --------------------------------
    def upsert_panes(self, spec: TableSpec, rows: list[dict]) -> int:
        """Replace a stored row iff the new ``(generation, pane_index)`` is at least its own
        (a NULL stored generation/pane_index counts as -1); insert new keys."""
        guard = ("S.generation > IFNULL(T.generation, -1) OR (S.generation = T.generation "
                 "AND S.pane_index >= IFNULL(T.pane_index, -1))")
        return self._sink(spec, rows, "panes", lambda items, params: self._update_insert(
            spec, items, params, 0, self._replace_sets(spec), guard))

    def upsert_replace(self, spec: TableSpec, rows: list[dict]) -> int:
        """Plain upsert by key: every non-key column from the new row (whatever ``spec.merge``
        says: the streaming sink replaces)."""
        return self._sink(spec, rows, "replace", lambda items, params: self._update_insert(
            spec, items, params, 0, self._replace_sets(spec)))

    def upsert_sessions(self, spec: TableSpec, rows: list[dict]) -> int:
        """A session row replaces every stored row of the same visitor it overlaps, unless a
        stored row supersedes it (panes.supersedes). The rows that survive are chosen first
        (into a script variable), so the DELETE cannot change which ones are inserted."""
        table, source = self._ref(spec.name), self._staged_source(spec, (ROW_ID,))
        cols = ", ".join(bq_quote(c) for c in spec.column_names)
        overlaps = ("T.brand = S.brand AND T.cookie_id = S.cookie_id "
                    "AND T.session_start < S.session_end AND T.session_end > S.session_start")
        stored_wins = ("(T.generation > S.generation OR (T.generation = S.generation "
                       "AND T.session_start <= S.session_start AND T.session_end >= S.session_end "
                       "AND T.events >= S.events))")

        def statements(items, params):
            return [
                f"SET _cx360_new = (SELECT IFNULL(ARRAY_AGG(S.{ROW_ID}), []) FROM {source} AS S "
                f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS T WHERE {overlaps} "
                f"AND {stored_wins}));",
                f"DELETE FROM {table} AS T WHERE EXISTS (SELECT 1 FROM {source} AS S "
                f"WHERE S.{ROW_ID} IN UNNEST(_cx360_new) AND {overlaps});",
                f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source} AS S "
                f"WHERE S.{ROW_ID} IN UNNEST(_cx360_new);"]

        return self._sink(spec, rows, "sessions", statements,
                          declare="DECLARE _cx360_new ARRAY<STRING> DEFAULT [];",
                          written="ARRAY_LENGTH(_cx360_new)")

    def _sink_lock(self, table: str) -> None:
        """The lock row of ``table`` in ``_cx360_sink_locks`` (once per process and table)."""
        if table in self._locked:
            return
        self._ensure_table(SINK_LOCKS, [
            bigquery.SchemaField("table_name", "STRING", mode="REQUIRED"),
            bigquery.SchemaField("writes", "INT64"),
            bigquery.SchemaField("updated_at", "TIMESTAMP")])
        self._job(f"INSERT INTO {self._ref(SINK_LOCKS)} (table_name, writes, updated_at) "
                  "SELECT @t, 0, CURRENT_TIMESTAMP() FROM UNNEST([1]) WHERE NOT EXISTS "
                  f"(SELECT 1 FROM {self._ref(SINK_LOCKS)} WHERE table_name = @t)",
                  [bigquery.ScalarQueryParameter("t", "STRING", table)])
        self._locked.add(table)

    def _sink(self, spec: TableSpec, rows: list[dict], mode: str,
              statements: Callable[[list[_Staged], list], list[str]], *,
              declare: str = "", written: str = "") -> int:
        """Stage ``rows`` (streaming inserts, as for write_batch), then one multi-statement
        transaction: take the table's sink lock (an UPDATE of its row in _cx360_sink_locks:
        two writers of one table always conflict, so BigQuery aborts one and it is retried
        against the other's result), run ``statements``, COMMIT. Rows BigQuery rejects raise
        RejectedRowsError (nothing is written)."""
        if self.read_only:
            raise WarehouseError("read-only warehouse")
        started = dt.datetime.now(dt.timezone.utc)
        stage_id, plan = self._plan(f"stream:{mode}", {spec.name: rows}, {spec.name: spec})
        _, rejected = self._stage(stage_id, plan, started.isoformat())
        if rejected:
            raise RejectedRowsError(f"stream:{spec.name}", rejected)
        self._sink_lock(spec.name)
        items = plan[spec.name]
        params = [bigquery.ScalarQueryParameter("stage_id", "STRING", stage_id),
                  bigquery.ScalarQueryParameter("since", "TIMESTAMP", started - STAGE_LOOKBACK),
                  bigquery.ScalarQueryParameter("lock", "STRING", spec.name)]
        body = "\n  ".join(statements(items, params))
        locks = self._ref(SINK_LOCKS)
        script = f"""{declare}
BEGIN TRANSACTION;
  UPDATE {locks} SET writes = writes + 1, updated_at = CURRENT_TIMESTAMP()
  WHERE table_name = @lock;
  IF @@row_count = 0 THEN
    INSERT INTO {locks} (table_name, writes, updated_at) VALUES (@lock, 1, CURRENT_TIMESTAMP());
  END IF;
  {body}
COMMIT TRANSACTION;
SELECT {written or len(items)} AS written;"""
        result, _ = self._job(script, params,
                              retry_on=lambda exc: is_transient(exc) or _concurrent_update(exc))
        return int(result[0][0]) if result else 0

    def seen_event_ids(self, event_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, tuple[str, int, int]] = {}
        for start in range(0, len(ids), ID_CHUNK):
            rows, _ = self._job(
                "SELECT event_id, topic, `partition`, `offset` FROM "
                f"{self._ref('_cx360_event_ids')} WHERE event_id IN UNNEST(@ids)",
                [bigquery.ArrayQueryParameter("ids", "STRING", ids[start:start + ID_CHUNK])])
            found.update({r[0]: (r[1], r[2], r[3]) for r in rows})
        return found

    # -- ledger ----------------------------------------------------------------------------
    def _batch_status(self, batch_id: str) -> str | None:
        rows, _ = self._job(f"SELECT status FROM {self._ref(LEDGER)} WHERE batch_id = @b",
                            [bigquery.ScalarQueryParameter("b", "STRING", batch_id)])
        return rows[0][0] if rows else None

    def record_batch(self, batch: Batch) -> None:
        ranges = json.dumps([list(r) for r in batch.ranges])
        params = [bigquery.ScalarQueryParameter("b", "STRING", batch.batch_id),
                  bigquery.ScalarQueryParameter("c", "INT64", batch.created_ms),
                  bigquery.ScalarQueryParameter("s", "STRING", batch.status),
                  bigquery.ScalarQueryParameter("r", "STRING", ranges)]
        retried = []

        def retry_on(exc):
            ok = is_transient(exc)
            retried.append(ok)
            return ok

        _, result = self._job(
            f"INSERT INTO {self._ref(LEDGER)} (batch_id, created_ms, status, ranges, updated_at) "
            "SELECT @b, @c, @s, @r, CURRENT_TIMESTAMP() FROM UNNEST([1]) "
            f"WHERE NOT EXISTS (SELECT 1 FROM {self._ref(LEDGER)} WHERE batch_id = @b)",
            params, retry_on=retry_on)
        if not result.num_dml_affected_rows and not retried:
            raise WarehouseError(f"batch {batch.batch_id} is recorded already")

    def batches(self, status: str | None = None) -> list[Batch]:
        sql = f"SELECT batch_id, created_ms, status, ranges FROM {self._ref(LEDGER)}"
        params = []
        if status:
            sql += " WHERE status = @s"
            params.append(bigquery.ScalarQueryParameter("s", "STRING", status))
        try:
            rows, _ = self._job(sql + " ORDER BY created_ms, batch_id", params)
        except gexc.NotFound:  # read-only view of a dataset the pipeline has not written yet
            return []
        return [Batch(r[0], r[1], r[2], [PartitionRange(*x) for x in json.loads(r[3])])
                for r in rows]

    def set_batch_status(self, batch_id: str, status: str) -> None:
        self._job(f"UPDATE {self._ref(LEDGER)} SET status = @s, "
                  "updated_at = CURRENT_TIMESTAMP() WHERE batch_id = @b",
                  [bigquery.ScalarQueryParameter("s", "STRING", status),
                   bigquery.ScalarQueryParameter("b", "STRING", batch_id)])

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        rows, _ = self._job(sql, [_param(None, p) for p in params])
        return [tuple(r.values()) for r in rows]

    def ensure_views(self) -> None:
        """Create the KPI views (sql/bigquery_views.sql), one query job per view in file order
        (a view's dependencies come before it), unless the dataset has them already.

        Each query job costs a round trip of a second or more, so the views are stamped: the
        last statement creates the view ``_cx360_views_version`` holding a hash of all
        statements. When that view holds the current hash and every view exists (one
        ``tables.list`` and one query), nothing is re-created. A failure half-way leaves the
        old stamp, so the next run creates them all again."""
        statements = view_statements(self.dataset)
        stamp = views_stamp(statements)
        if self._views_current(statements, stamp):
            return
        for statement in statements:
            self._job(statement)
        self._job(f"CREATE OR REPLACE VIEW {self._ref(VIEWS_STAMP)} AS SELECT '{stamp}' AS stamp")

    def _views_current(self, statements: Sequence[str], stamp: str) -> bool:
        wanted = {VIEWS_STAMP, *(view_name(s) for s in statements)}
        have = {t.table_id for t in self._call(self.client.list_tables, self.dataset,
                                               timeout=HTTP_TIMEOUT_S, what="list tables")}
        if wanted - have:
            return False
        rows, _ = self._job(f"SELECT stamp FROM {self._ref(VIEWS_STAMP)}")
        return bool(rows) and rows[0][0] == stamp

    def query_records(self, sql: str, params: Sequence = ()) -> list[dict]:
        rows, _ = self._job(sql, [_param(None, p) for p in params])
        return [dict(r.items()) for r in rows]

    def epoch_ms_sql(self, column: str) -> str:
        return f"UNIX_MILLIS({column})"

    def bytes_contain(self, column: str, needle: str) -> tuple[str, list]:
        # The hex of the column against a pattern of the needle's bytes at a byte boundary,
        # each ASCII letter in either case. (The emulator has no LOWER(BYTES) and turns a
        # value that is not UTF-8, as Avro often is, into NULL in SAFE_CONVERT_BYTES_TO_STRING.)
        parts = []
        for byte in needle.encode():
            char = chr(byte)
            parts.append(f"(?:{ord(char.upper()):02x}|{ord(char.lower()):02x})"
                         if char.isascii() and char.isalpha() else f"{byte:02x}")
        return f"REGEXP_CONTAINS(TO_HEX({column}), ?)", ["^(?:..)*?" + "".join(parts)]

    def has_table(self, name: str) -> bool:
        return name in self._listed_tables()

    def quote(self, name: str) -> str:
        return bq_quote(name)

    def execute_transaction(self, statements: Sequence[tuple[str, Sequence]]) -> list[int]:
        """One multi-statement query job: ``BEGIN TRANSACTION``, each statement followed by
        collecting ``@@row_count``, ``COMMIT TRANSACTION``; a failing statement rolls the whole
        transaction back. Scripts take named parameters, so the i-th ``?`` becomes ``@p<i>``."""
        params, body = [], []
        for sql, values in statements:
            parts = sql.split("?")
            if len(parts) - 1 != len(values):
                raise ValueError(f"{len(values)} parameters for {len(parts) - 1} placeholders")
            text = parts[0]
            for value, rest in zip(values, parts[1:]):
                name = f"p{len(params)}"
                params.append(_param(name, value))
                text += f"@{name}{rest}"
            body.append(f"{text};\n  SET _cx360_counts = ARRAY_CONCAT(_cx360_counts, "
                        f"[@@row_count]);")
        script = ("DECLARE _cx360_counts ARRAY<INT64> DEFAULT [];\nBEGIN TRANSACTION;\n  "
                  + "\n  ".join(body) + "\nCOMMIT TRANSACTION;\nSELECT _cx360_counts;")
        rows, _ = self._job(script, params)
        return [int(n) for n in rows[0][0]] if rows else []

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()
