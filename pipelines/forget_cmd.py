"""`cx360 forget`: erase one customer (GDPR art. 17) from the warehouse.

    cx360 forget --identifier anna@example.org --warehouse duckdb:data/cx360.duckdb
    cx360 forget --identifier A-12345678
    cx360 forget --identifier instagram:@anna_k          # a handle (any platform: @anna_k)

The identifier may be a raw e-mail or phone number (normalised and hashed exactly as at
ingestion, so the raw value is never stored), an account id, a cookie id, a social handle or
a typed identifier (``em:<hash>``). The command finds the customer's component, deletes its
identity rows (map, links, merges), its touchpoint facts, its web events, its streamed web
sessions and its inbound posts, redacts its dead letters (key, value and a detail quoting it)
in one transaction, and records every erased identifier in ``erasures``; later runs
and replays drop events carrying an erased identifier. Works on every warehouse backend
(DuckDB, PostgreSQL, BigQuery). On DuckDB run it while no pipeline writes (one writer per
file). Exit 0 when something was erased, 1 when nothing
matched.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time



def register(sub) -> None:
    parser = sub.add_parser("forget", help="erase a customer's personal data (GDPR)",
                            description=__doc__.split("\n\n")[1])
    parser.add_argument("--identifier", required=True,
                        help="e-mail, phone, account id, cookie id or social handle")
    parser.add_argument("--warehouse", default="duckdb:data/cx360.duckdb",
                        help="warehouse URL (default duckdb:data/cx360.duckdb)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def _mark(warehouse) -> str:
    """The parameter placeholder of ``warehouse.query`` (PostgreSQL: %s; DuckDB, BigQuery: ?)."""
    return "%s" if warehouse.paramstyle == "format" else "?"


def _candidates(warehouse, raw: str) -> list[str]:
    from cx360.transforms.identity import HANDLE, Pseudonymiser

    raw = raw.strip()
    if raw.startswith("@"):
        pattern = f"{HANDLE}:%:{raw.lower()}"
        found = set()
        for table in ("identity_map", "customer_touchpoints"):
            found |= {r[0] for r in warehouse.query(
                f"SELECT DISTINCT identifier FROM {table} WHERE identifier LIKE "
                f"{_mark(warehouse)}", [pattern])}
        return sorted(found)
    platform, _, handle = raw.partition(":")
    if handle.startswith("@") and platform.isalpha():
        return [f"{HANDLE}:{platform}:{handle.lower()}"]
    return Pseudonymiser().identifier(raw)


def _utc(warehouse, ms: int):
    """A TIMESTAMP parameter: DuckDB's TIMESTAMP is naive UTC, the others take an instant."""
    from cx360.transforms.warehouse.duckdb_backend import DuckDBWarehouse

    value = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return value.replace(tzinfo=None) if isinstance(warehouse, DuckDBWarehouse) else value


def forget(warehouse, raw: str, now_ms: int | None = None) -> dict:
    """Erase the customer behind ``raw``; returns what was deleted (counts per table).

    Backend-neutral (DuckDB, PostgreSQL, BigQuery): look-ups go through ``select_where_in``
    and plain SQL, the deletions and the erasure records through ONE
    ``Warehouse.execute_transaction``, so a failure erases nothing."""
    from cx360.transforms.identity import ACCOUNT, ANONYMOUS_KEY, COOKIE, HANDLE, implicit_key
    from cx360.transforms.warehouse.spec import TABLES

    warehouse.ensure_tables(TABLES.values())
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    candidates = _candidates(warehouse, raw)
    mapped = dict(warehouse.select_where_in("identity_map", "identifier", candidates,
                                            ("identifier", "customer_key")))
    touched = {r[0] for r in warehouse.select_where_in(
        "customer_touchpoints", "identifier", [c for c in candidates if c not in mapped],
        ("DISTINCT identifier",))}
    keys = {mapped[c] for c in candidates if c in mapped} | {implicit_key(c) for c in touched}
    identifiers = set(mapped) | touched
    if not keys:
        return {"identifier_types": sorted({c.split(":")[0] for c in candidates}),
                "customers": 0, "identifiers": 0, "deleted": {}}
    identifiers |= {r[0] for r in warehouse.select_where_in(
        "identity_map", "customer_key", sorted(keys), ("identifier",))}
    # Facts of identifiers without a map row belong to their implicit key: for an account key
    # that is the account itself; a 'K…' key (sha256 of one identifier) is the implicit key of
    # that identifier only, which is a candidate (map rows are never deleted but here).
    accounts_as_keys = [f"{ACCOUNT}:{k}" for k in keys if not ANONYMOUS_KEY.fullmatch(k)]
    identifiers |= {r[0] for r in warehouse.select_where_in(
        "customer_touchpoints", "identifier", accounts_as_keys, ("DISTINCT identifier",))}
    ids = sorted(identifiers)
    accounts = [i.split(":", 1)[1] for i in ids if i.startswith(f"{ACCOUNT}:")]
    cookies = [i.split(":", 1)[1] for i in ids if i.startswith(f"{COOKIE}:")]
    handles = [i.split(":", 2)[2] for i in ids if i.startswith(f"{HANDLE}:")]
    key_list = sorted(keys)

    def marks(values) -> str:
        return ", ".join("?" for _ in values) or "NULL"

    statements: list[tuple[str, str, list]] = [
        ("inbound_posts", f"DELETE FROM inbound_posts WHERE event_id IN (SELECT event_id "
         f"FROM customer_touchpoints WHERE identifier IN ({marks(ids)}))", ids),
        ("customer_touchpoints",
         f"DELETE FROM customer_touchpoints WHERE identifier IN ({marks(ids)})", ids)]
    if accounts or cookies:
        statements.append(("web_events", f"DELETE FROM web_events WHERE account_id IN "
                           f"({marks(accounts)}) OR cookie_id IN ({marks(cookies)})",
                           accounts + cookies))
    if cookies and warehouse.has_table("stream_web_sessions"):  # written by `cx360 stream`
        statements.append(("stream_web_sessions", "DELETE FROM stream_web_sessions WHERE "
                           f"cookie_id IN ({marks(cookies)})", cookies))
    statements += _dead_letter_statements(warehouse, accounts + cookies + handles)
    statements += [
        ("identity_links", f"DELETE FROM identity_links WHERE id_a IN ({marks(ids)}) "
         f"OR id_b IN ({marks(ids)})", ids + ids),
        ("identity_map", f"DELETE FROM identity_map WHERE identifier IN ({marks(ids)})", ids),
        ("identity_merges", f"DELETE FROM identity_merges WHERE from_key IN "
         f"({marks(key_list)}) OR to_key IN ({marks(key_list)})", key_list + key_list)]
    erased_at = _utc(warehouse, now_ms)
    for identifier in ids:  # insert-if-absent in SQL all three accept (no ON CONFLICT)
        statements.append(("erasures", "INSERT INTO erasures (identifier, customer_key, "
                           "erased_at) SELECT ?, ?, ? FROM (SELECT 1 AS one) AS o WHERE NOT "
                           "EXISTS (SELECT 1 FROM erasures WHERE identifier = ?)",
                           [identifier, key_list[0], erased_at, identifier]))
    counts = warehouse.execute_transaction([(sql, params) for _, sql, params in statements])
    deleted: dict[str, int] = {}
    for (table, _, _), n in zip(statements, counts):
        deleted[table] = deleted.get(table, 0) + n
    recorded = deleted.pop("erasures", 0)
    redacted = deleted.pop(REDACTED, 0)
    return {"identifier_types": sorted({i.split(":")[0] for i in ids}),
            "customers": len(keys), "identifiers": len(ids), "erasures_recorded": recorded,
            "deleted": deleted, "dead_letters_redacted": redacted}


#: The label of the dead-letter statement (it redacts rows, it deletes none).
REDACTED = "dead_letters redacted"
ERASED_DETAIL = "erased by cx360 forget"


def _dead_letter_statements(warehouse, raw_ids: list[str]) -> list[tuple[str, str, list]]:
    """Dead letters keep the record's key and value unless they hold an e-mail or phone
    (docs/identity.md), so a rejected event of this customer still shows their account id,
    cookie or handle. Those rows keep where they came from, stage and reason (counts still
    reconcile; the dead-letter topic keeps the bytes for replay, and replays drop erased
    identifiers) but lose key, value, their hashes and a detail that quotes the customer.
    Matching is a case-insensitive substring search, so a short handle can also redact
    another customer's dead letter: lost debugging detail, never kept personal data."""
    needles = sorted({raw.lower() for raw in raw_ids if raw})
    if not needles:
        return []

    def in_text(column: str) -> tuple[str, list]:
        return " OR ".join(f"strpos(lower({column}), ?) > 0" for _ in needles), needles

    def in_bytes(column: str) -> tuple[str, list]:
        parts = [warehouse.bytes_contain(column, n) for n in needles]
        return " OR ".join(sql for sql, _ in parts), [p for _, params in parts for p in params]

    in_detail = in_text("detail")
    detail_sql, detail_params = in_detail
    where = [in_bytes("key"), in_bytes("value"), in_text("value_redacted"), in_detail]
    sql = ("UPDATE dead_letters SET key = NULL, value = NULL, value_redacted = NULL, "
           "key_sha256 = NULL, value_sha256 = NULL, "
           f"detail = CASE WHEN {detail_sql} THEN ? ELSE detail END WHERE "
           + " OR ".join(f"({cond})" for cond, _ in where))
    return [(REDACTED, sql, detail_params + [ERASED_DETAIL]
             + [p for _, params in where for p in params])]


def run(args: argparse.Namespace) -> int:
    from cx360.pipelines.options import open_warehouse_arg

    warehouse = open_warehouse_arg(args.warehouse)
    try:
        warehouse.ensure_views()
        report = forget(warehouse, args.identifier)
    finally:
        warehouse.close()
    # Never echo the raw identifier: it may be an e-mail or a phone number.
    if args.json:
        print(json.dumps(report, sort_keys=True))
    elif report["customers"]:
        print(f"erased {report['customers']} customer(s): {report['identifiers']} identifiers "
              f"({', '.join(report['identifier_types'])}); rows deleted: "
              + ", ".join(f"{t} {n}" for t, n in sorted(report["deleted"].items()))
              + f"; dead letters redacted: {report['dead_letters_redacted']}")
    else:
        print("nothing to erase: no customer has that identifier")
    return 0 if report["customers"] else 1
