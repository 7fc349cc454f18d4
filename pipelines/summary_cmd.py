"""`cx360 summary`: a plain-text overview of what the warehouse holds, for a terminal."""
from __future__ import annotations

import argparse

from cx360.pipelines.cli import UserError
from cx360.pipelines.run_cmd import add_warehouse_arg


def register(sub) -> None:
    parser = sub.add_parser("summary", help="print a summary of the warehouse's KPIs")
    add_warehouse_arg(parser)
    parser.set_defaults(handler=run)


def _table(title: str, header: tuple, rows: list[tuple]) -> None:
    print(title)
    if not rows:
        print("  (none)")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in (header, *rows):
        print("  " + "  ".join(str(x).rjust(w) if isinstance(x, (int, float)) else
                               str(x).ljust(w) for x, w in zip(line, widths)))


def run(args: argparse.Namespace) -> int:
    from cx360.transforms.warehouse import WarehouseError, open_warehouse

    try:
        warehouse = open_warehouse(args.warehouse, read_only=True)
    except WarehouseError as exc:
        raise UserError(str(exc)) from None
    with warehouse:
        try:
            span = warehouse.query(
                "SELECT min(window_start), max(window_end), sum(events) FROM event_counts "
                "WHERE window_seconds = (SELECT min(window_seconds) FROM event_counts)")[0]
        except Exception as exc:  # a warehouse the pipeline never wrote to
            raise UserError(f"no cx360 tables in {args.warehouse}: {exc}") from None
        smallest = "(SELECT min(window_seconds) FROM event_counts)"
        print(f"events {span[2] or 0:,} from {span[0]} to {span[1]} (UTC)\n")
        _table("events per kind and type", ("kind", "type", "events"), warehouse.query(
            f"SELECT event_kind, event_type, sum(events)::BIGINT FROM event_counts "
            f"WHERE window_seconds = {smallest} GROUP BY 1, 2 ORDER BY 1, 3 DESC"))
        print()
        _table("events per brand", ("brand", "social", "web", "survey"), warehouse.query(
            f"SELECT brand, sum(events) FILTER (event_kind = 'social')::BIGINT, "
            f"sum(events) FILTER (event_kind = 'web')::BIGINT, "
            f"sum(events) FILTER (event_kind = 'survey')::BIGINT FROM event_counts "
            f"WHERE window_seconds = {smallest} GROUP BY 1 ORDER BY 2 DESC NULLS LAST"))
        print()
        _table("dead letters", ("topic", "stage", "reason", "records"), warehouse.query(
            "SELECT topic, stage, reason, count(*) FROM dead_letters GROUP BY ALL ORDER BY ALL"))
    return 0
