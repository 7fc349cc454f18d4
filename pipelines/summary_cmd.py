"""`cx360 summary`: a plain-text overview of what the warehouse holds, for a terminal."""
from __future__ import annotations

import argparse

from cx360.pipelines.cli import UserError
from cx360.pipelines.run_cmd import add_warehouse_arg


def register(sub) -> None:
    parser = sub.add_parser("summary", help="print a summary of the warehouse's KPIs")
    add_warehouse_arg(parser)
    parser.set_defaults(handler=run)


def _fmt(value) -> str | int | float:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return value


def _table(title: str, header: tuple, rows: list[tuple]) -> None:
    print(title)
    if not rows:
        print("  (none)")
        return
    rows = [tuple(_fmt(v) for v in row) for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in (header, *rows):
        print("  " + "  ".join(str(x).rjust(w) if isinstance(x, (int, float)) else
                               str(x).ljust(w) for x, w in zip(line, widths)))


def run(args: argparse.Namespace) -> int:
    from cx360.pipelines.options import open_warehouse_arg

    warehouse = open_warehouse_arg(args.warehouse, read_only=True)
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
        _table("dead letters", ("topic", "stage", "reason", "records"), warehouse.query(
            "SELECT topic, stage, reason, count(*) FROM dead_letters GROUP BY ALL ORDER BY ALL"))
        print()
        day = f"window_seconds = {smallest}"
        _table("social KPIs per brand, whole period (own brands first)",
               ("brand", "mentions", "sentiment", "neg %", "engagement %", "share of voice %"),
               warehouse.query(f"""
            WITH s AS (SELECT brand, sum(mentions) m, sum(polarity_sum) / NULLIF(sum(scored), 0) sent,
                              100.0 * sum(negative) / NULLIF(sum(scored), 0) neg,
                              100.0 * (sum(likes) + sum(shares) + sum(comments))
                                  / NULLIF(sum(brand_post_reach), 0) eng
                       FROM social_kpis WHERE {day} GROUP BY brand),
                 v AS (SELECT brand, sum(mentions) vm FROM share_of_voice_counts WHERE {day}
                       GROUP BY brand),
                 b AS (SELECT v.brand, coalesce(br.industry, '(none)') ind, coalesce(br.own, false) own, vm
                       FROM v LEFT JOIN brands br USING (brand))
            SELECT b.brand, s.m, s.sent, s.neg, s.eng,
                   100.0 * b.vm / sum(b.vm) OVER (PARTITION BY b.ind)
            FROM b LEFT JOIN s USING (brand) ORDER BY b.own DESC, b.ind, b.brand"""))
        print()
        _table("brand response (customer posts aimed at the brand)",
               ("brand", "inbound", "response %", "median min", "p90 min", "within 1h %",
                "open complaints"), warehouse.query("""
            SELECT brand, count(*), 100.0 * count(first_reply_time) / count(*),
                   quantile_cont(response_minutes, 0.5), quantile_cont(response_minutes, 0.9),
                   100.0 * count(*) FILTER (WHERE response_minutes <= 60) / count(*),
                   count(*) FILTER (WHERE label = 'negative' AND first_reply_time IS NULL)
            FROM brand_response_facts GROUP BY brand ORDER BY brand"""))
        print()
        _table("web shop", ("brand", "sessions", "conversion %", "bounce %", "orders", "revenue",
                            "social-referred"), warehouse.query("""
            SELECT brand, count(*), 100.0 * count(*) FILTER (WHERE converted) / count(*),
                   100.0 * count(*) FILTER (WHERE bounced) / count(*), sum(orders),
                   sum(revenue), count(*) FILTER (WHERE social_referred)
            FROM web_sessions_enriched GROUP BY brand ORDER BY brand"""))
        print()
        _table("surveys", ("brand", "NPS", "n", "CSAT top-2 %", "n", "CES mean", "n"),
               warehouse.query(f"""
            SELECT brand,
                   100.0 * (sum(promoters) - sum(detractors))
                       / NULLIF(sum(responses) FILTER (WHERE survey_type = 'NPS'), 0),
                   sum(responses) FILTER (WHERE survey_type = 'NPS'),
                   100.0 * sum(top2) / NULLIF(sum(responses) FILTER (WHERE survey_type = 'CSAT'), 0),
                   sum(responses) FILTER (WHERE survey_type = 'CSAT'),
                   sum(score_sum) FILTER (WHERE survey_type = 'CES')
                       / NULLIF(sum(responses) FILTER (WHERE survey_type = 'CES'), 0),
                   sum(responses) FILTER (WHERE survey_type = 'CES')
            FROM survey_kpis WHERE {day} GROUP BY brand ORDER BY brand"""))
    return 0
