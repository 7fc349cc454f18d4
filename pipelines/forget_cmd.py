"""`cx360 forget`: erase one customer (GDPR art. 17) from the warehouse.

    cx360 forget --identifier anna@example.org --warehouse duckdb:data/cx360.duckdb
    cx360 forget --identifier A-12345678
    cx360 forget --identifier instagram:@anna_k          # a handle (any platform: @anna_k)

The identifier may be a raw e-mail or phone number (normalised and hashed exactly as at
ingestion, so the raw value is never stored), an account id, a cookie id, a social handle or
a typed identifier (``em:<hash>``). The command finds the customer's component, deletes its
identity rows (map, links, merges), its touchpoint facts, its web events and its inbound
posts in one transaction, and records every erased identifier in ``erasures``; later runs
and replays drop events carrying an erased identifier. Run it while no pipeline writes to the
warehouse (DuckDB allows one writer). Exit 0 when something was erased, 1 when nothing
matched.
"""
from __future__ import annotations

import argparse
import json
import time

from cx360.pipelines.cli import UserError


def register(sub) -> None:
    parser = sub.add_parser("forget", help="erase a customer's personal data (GDPR)",
                            description=__doc__.split("\n\n")[1])
    parser.add_argument("--identifier", required=True,
                        help="e-mail, phone, account id, cookie id or social handle")
    parser.add_argument("--warehouse", default="duckdb:data/cx360.duckdb",
                        help="warehouse URL (default duckdb:data/cx360.duckdb)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def _candidates(warehouse, raw: str) -> list[str]:
    from cx360.transforms.identity import HANDLE, Pseudonymiser

    raw = raw.strip()
    if raw.startswith("@"):
        pattern = f"{HANDLE}:%:{raw.lower()}"
        return sorted({r[0] for r in warehouse.query(
            "SELECT identifier FROM identity_map WHERE identifier LIKE ? UNION "
            "SELECT identifier FROM customer_touchpoints WHERE identifier LIKE ?",
            [pattern, pattern])})
    platform, _, handle = raw.partition(":")
    if handle.startswith("@") and platform.isalpha():
        return [f"{HANDLE}:{platform}:{handle.lower()}"]
    return Pseudonymiser().identifier(raw)


def forget(warehouse, raw: str, now_ms: int | None = None) -> dict:
    """Erase the customer behind ``raw``; returns what was deleted (counts per table)."""
    from cx360.transforms.identity import implicit_key
    from cx360.transforms.warehouse.spec import TABLES

    warehouse.ensure_tables(TABLES.values())
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    candidates = _candidates(warehouse, raw)
    keys, identifiers = set(), set()
    for identifier in candidates:
        row = warehouse.query("SELECT customer_key FROM identity_map WHERE identifier = ?",
                              [identifier])
        seen = row or warehouse.query(
            "SELECT 1 FROM customer_touchpoints WHERE identifier = ? LIMIT 1", [identifier])
        if seen:
            keys.add(row[0][0] if row else implicit_key(identifier))
            identifiers.add(identifier)
    if not keys:
        return {"identifier_types": sorted({c.split(":")[0] for c in candidates}),
                "customers": 0, "identifiers": 0, "deleted": {}}
    for key in sorted(keys):
        identifiers |= {r[0] for r in warehouse.query(
            "SELECT identifier FROM identity_map WHERE customer_key = ?", [key])}
        identifiers |= {r[0] for r in warehouse.query(
            "SELECT DISTINCT t.identifier FROM customer_touchpoints t LEFT JOIN identity_map m "
            "USING (identifier) WHERE m.identifier IS NULL AND "
            "cx360_implicit_key(t.identifier) = ?", [key])}
    ids = sorted(identifiers)
    accounts = [i.split(":", 1)[1] for i in ids if i.startswith("acct:")]
    cookies = [i.split(":", 1)[1] for i in ids if i.startswith("ck:")]
    deleted: dict[str, int] = {}

    def run(table: str, sql: str, params: list) -> None:
        deleted[table] = deleted.get(table, 0) + warehouse.query(sql, params)[0][0]

    marks = ", ".join("?" for _ in ids)
    key_list = sorted(keys)
    key_marks = ", ".join("?" for _ in key_list)
    warehouse.query("BEGIN TRANSACTION")
    try:
        run("inbound_posts", f"DELETE FROM inbound_posts WHERE event_id IN (SELECT event_id "
            f"FROM customer_touchpoints WHERE identifier IN ({marks}))", ids)
        run("customer_touchpoints",
            f"DELETE FROM customer_touchpoints WHERE identifier IN ({marks})", ids)
        if accounts or cookies:
            a_marks = ", ".join("?" for _ in accounts) or "NULL"
            c_marks = ", ".join("?" for _ in cookies) or "NULL"
            run("web_events", f"DELETE FROM web_events WHERE account_id IN ({a_marks}) "
                f"OR cookie_id IN ({c_marks})", accounts + cookies)
        run("identity_links", f"DELETE FROM identity_links WHERE id_a IN ({marks}) "
            f"OR id_b IN ({marks})", ids + ids)
        run("identity_map", f"DELETE FROM identity_map WHERE identifier IN ({marks})", ids)
        run("identity_merges", f"DELETE FROM identity_merges WHERE from_key IN ({key_marks}) "
            f"OR to_key IN ({key_marks})", key_list + key_list)
        key_of = {i: next(iter(sorted(keys))) for i in ids}
        for identifier in ids:
            warehouse.query("INSERT INTO erasures VALUES (?, ?, make_timestamp(? * 1000)) "
                            "ON CONFLICT DO NOTHING", [identifier, key_of[identifier], now_ms])
        warehouse.query("COMMIT")
    except BaseException:
        warehouse.query("ROLLBACK")
        raise
    return {"identifier_types": sorted({i.split(":")[0] for i in ids}),
            "customers": len(keys), "identifiers": len(ids), "deleted": deleted}


def run(args: argparse.Namespace) -> int:
    from cx360.transforms.warehouse import WarehouseError, open_warehouse

    if not args.warehouse.startswith("duckdb:") and \
            not args.warehouse.partition("?")[0].endswith(".duckdb"):
        raise UserError("forget supports the DuckDB warehouse only (see docs/identity.md)")
    try:
        warehouse = open_warehouse(args.warehouse)
    except WarehouseError as exc:
        raise UserError(str(exc)) from None
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
              + ", ".join(f"{t} {n}" for t, n in sorted(report["deleted"].items())))
    else:
        print("nothing to erase: no customer has that identifier")
    return 0 if report["customers"] else 1
