"""`cx360 report --out report.html`: one self-contained HTML dashboard from the KPI views.

The file has no script, no external font, image, style sheet or CDN: every chart is inline SVG
drawn here, each followed by a table of its values (for screen readers and for copying). It
reads the kpi_* views through the Warehouse interface with plain SELECTs, so it works the same
on DuckDB, PostgreSQL and BigQuery; ratios over the whole period are computed from the summed
components (never by averaging per-window ratios), as in docs/kpis.md.

    cx360 report --out report.html [--warehouse URL] [--brand NAME ...] [--since 7d|DATE]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import html
import math
import pathlib
import time

from cx360.pipelines.cli import UserError
from cx360.pipelines.run_cmd import add_warehouse_arg

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
PHASES = ("awareness", "favorability", "consideration", "purchase", "loyalty")
W, H = 640, 260  # chart size in SVG user units
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 16, 40


def register(sub) -> None:
    parser = sub.add_parser("report", help="render a self-contained HTML KPI dashboard")
    parser.add_argument("--out", required=True, help="HTML file to write")
    add_warehouse_arg(parser)
    parser.add_argument("--brand", action="append", default=[],
                        help="only this brand (repeatable; default: every brand)")
    parser.add_argument("--since", help="only windows starting at or after this time: an ISO "
                        "date/time (UTC) such as 2026-11-01 or a duration back from now (7d)")
    parser.set_defaults(handler=run)


def parse_since(text: str | None, now_ms: int) -> int | None:
    """Epoch ms for ``--since``: ISO date/time (UTC unless it says otherwise) or a duration."""
    if not text:
        return None
    from cx360.transforms.counts import parse_duration

    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return now_ms - parse_duration(text) * 1000
        except ValueError:
            raise UserError(f"--since {text!r}: not an ISO date/time (2026-11-01, "
                            "2026-11-01T06:00:00Z) or a duration (7d)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return int(stamp.timestamp() * 1000)


# -- data ------------------------------------------------------------------------------------
def _ms(value) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return int(value.timestamp() * 1000)


def _num(value) -> float:
    return float(value) if value is not None else 0.0


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (DuckDB's quantile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclasses.dataclass
class ReportData:
    window_seconds: int
    brands: list[str]
    sentiment: dict[str, list[tuple[int, float]]]     # brand -> [(window start ms, mean)]
    nps: dict[str, tuple[float, int]]                 # brand -> (NPS, responses)
    response: dict[str, tuple[float | None, float | None, float, int]]  # median, p90, rate, n
    share_of_voice: list[tuple[str, str, float, int]]  # industry, brand, %, mentions
    funnel: list[tuple[str, int]]                     # step, sessions
    journey: list[tuple[str, int]]                    # phase, customers
    period: tuple[int | None, int | None]


def load(warehouse, brands: list[str], since_ms: int | None) -> ReportData:
    """Everything the report shows, from the views; ``brands`` empty = every brand."""
    sizes = sorted(int(r[0]) for r in warehouse.query(
        "SELECT window_seconds FROM _cx360_window_sizes"))
    if not sizes:
        raise UserError("the warehouse holds no KPI windows yet: run `cx360 run --once` first")
    size = sizes[0]

    def keep(row, time_key="window_start") -> bool:
        if brands and row["brand"] not in brands:
            return False
        return since_ms is None or row[time_key] is None or _ms(row[time_key]) >= since_ms

    social = [r for r in warehouse.query_records(
        "SELECT window_start, brand, scored, polarity_sum FROM kpi_social_brand "
        f"WHERE window_seconds = {size}") if keep(r)]
    sums: dict[tuple[str, int], list[float]] = {}
    for r in social:
        acc = sums.setdefault((r["brand"], _ms(r["window_start"])), [0.0, 0.0])
        acc[0] += _num(r["polarity_sum"])
        acc[1] += _num(r["scored"])
    sentiment: dict[str, list[tuple[int, float]]] = {}
    for (brand, start), (pol, scored) in sorted(sums.items()):
        if scored:
            sentiment.setdefault(brand, []).append((start, pol / scored))

    nps_acc: dict[str, list[float]] = {}
    for r in warehouse.query_records(
            "SELECT window_start, brand, survey_type, responses, promoters, detractors "
            f"FROM kpi_survey WHERE window_seconds = {size}"):
        if r["survey_type"] == "NPS" and keep(r):
            acc = nps_acc.setdefault(r["brand"], [0.0, 0.0, 0.0])
            acc[0] += _num(r["promoters"])
            acc[1] += _num(r["detractors"])
            acc[2] += _num(r["responses"])
    nps = {b: (100.0 * (p - d) / n, int(n)) for b, (p, d, n) in sorted(nps_acc.items()) if n}

    minutes: dict[str, list[float]] = {}
    inbound: dict[str, list[int]] = {}
    for r in warehouse.query_records(
            "SELECT inbound_time, brand, response_minutes FROM brand_response_facts"):
        if keep(r, "inbound_time"):
            counts = inbound.setdefault(r["brand"], [0, 0])
            counts[0] += 1
            if r["response_minutes"] is not None:
                counts[1] += 1
                minutes.setdefault(r["brand"], []).append(float(r["response_minutes"]))
    response = {b: (quantile(minutes.get(b, []), 0.5), quantile(minutes.get(b, []), 0.9),
                    100.0 * replied / n, n) for b, (n, replied) in sorted(inbound.items())}

    voice: dict[tuple[str, str], float] = {}
    for r in warehouse.query_records(
            "SELECT window_start, brand, industry, mentions FROM kpi_share_of_voice "
            f"WHERE window_seconds = {size}"):
        if since_ms is None or _ms(r["window_start"]) >= since_ms:  # all brands of a set
            key = (r["industry"], r["brand"])
            voice[key] = voice.get(key, 0.0) + _num(r["mentions"])
    totals: dict[str, float] = {}
    for (industry, _), n in voice.items():
        totals[industry] = totals.get(industry, 0.0) + n
    share_of_voice = [(industry, brand, 100.0 * n / totals[industry], int(n))
                      for (industry, brand), n in sorted(voice.items())
                      if totals[industry] and (not brands or brand in brands
                                               or any((industry, b) in voice for b in brands))]

    steps = {"sessions": 0.0, "viewed_product": 0.0, "added_to_cart": 0.0, "ordered": 0.0}
    for r in warehouse.query_records(
            "SELECT window_start, brand, sessions, viewed_product, added_to_cart, ordered "
            f"FROM kpi_funnel WHERE window_seconds = {size}"):
        if keep(r):
            for step in steps:
                steps[step] += _num(r[step])
    labels = {"sessions": "sessions", "viewed_product": "product view",
              "added_to_cart": "cart", "ordered": "order"}
    funnel = [(labels[s], int(n)) for s, n in steps.items()]

    # Journey phases are a current state per customer (no time filter); '(all)' = every brand.
    journey_counts = {p: 0 for p in PHASES}
    wanted = set(brands) if brands else {"(all)"}
    for r in warehouse.query_records("SELECT brand, journey_phase, customers FROM kpi_journey"):
        if r["brand"] in wanted and r["journey_phase"] in journey_counts:
            journey_counts[r["journey_phase"]] += int(r["customers"])
    journey = list(journey_counts.items())

    seen = sorted({*sentiment, *nps, *response, *(b for _, b, _, _ in share_of_voice)})
    starts = [s for points in sentiment.values() for s, _ in points]
    period = (min(starts) if starts else None, max(starts) + size * 1000 if starts else None)
    return ReportData(size, seen, sentiment, nps, response, share_of_voice, funnel, journey,
                      period)


# -- SVG -------------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits=1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _stamp(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _nice_range(low: float, high: float) -> tuple[float, float]:
    if low == high:
        low, high = low - 1, high + 1
    margin = (high - low) * 0.05
    return low - margin, high + margin


def _axis_y(low: float, high: float, fmt) -> str:
    out = []
    for i in range(5):
        value = low + (high - low) * i / 4
        y = PAD_T + (H - PAD_T - PAD_B) * (1 - i / 4)
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/><text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_e(fmt(value))}</text>')
    return "".join(out)


def line_chart(chart_id: str, title: str, series: dict[str, list[tuple[int, float]]],
               y_label: str) -> str:
    points = [p for values in series.values() for p in values]
    if not points:
        return _empty(chart_id, title)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = _nice_range(min(p[1] for p in points), max(p[1] for p in points))
    span = (x1 - x0) or 1

    def sx(x):
        return PAD_L + (W - PAD_L - PAD_R) * (x - x0) / span

    def sy(y):
        return PAD_T + (H - PAD_T - PAD_B) * (1 - (y - y0) / (y1 - y0))

    parts = [_axis_y(y0, y1, lambda v: f"{v:.2f}")]
    for i, (name, values) in enumerate(sorted(series.items())):
        color = PALETTE[i % len(PALETTE)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                     for j, (x, y) in enumerate(values))
        parts.append(f'<path class="mark" d="{d}" fill="none" stroke="{color}" '
                     f'stroke-width="2"><title>{_e(name)}</title></path>')
        for x, y in values:
            parts.append(f'<circle class="mark" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" '
                         f'fill="{color}"><title>{_e(name)} {_e(_stamp(x))}: {y:.3f}'
                         f'</title></circle>')
    parts.append(f'<text class="tick" x="{PAD_L}" y="{H - 8}">{_e(_stamp(x0))}</text>'
                 f'<text class="tick" x="{W - PAD_R}" y="{H - 8}" text-anchor="end">'
                 f'{_e(_stamp(x1))}</text>')
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[i % len(PALETTE)]}">'
                     f'</i>{_e(name)}</span>' for i, name in enumerate(sorted(series)))
    rows = [(name, _stamp(x), f"{y:.3f}") for name, values in sorted(series.items())
            for x, y in values]
    return _figure(chart_id, title, _svg(chart_id, title, "".join(parts)), legend,
                   ("brand", "window start (UTC)", y_label), rows)


def bar_chart(chart_id: str, title: str, bars: list[tuple[str, list[tuple[str, float | None]]]],
              headers: tuple[str, ...], fmt=lambda v: f"{v:,.1f}", extra_rows=None) -> str:
    """Grouped vertical bars: [(group label, [(series name, value), ...]), ...]."""
    values = [v for _, series in bars for _, v in series if v is not None]
    if not values:
        return _empty(chart_id, title)
    low, high = min(0.0, min(values)), max(0.0, max(values))
    if low == high:
        high = low + 1
    names = list(dict.fromkeys(n for _, series in bars for n, _ in series))
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    group_w = plot_w / len(bars)
    bar_w = group_w * 0.8 / len(names)

    def sy(y):
        return PAD_T + plot_h * (1 - (y - low) / (high - low))

    parts = [_axis_y(low, high, fmt)]
    for g, (label, series) in enumerate(bars):
        gx = PAD_L + g * group_w + group_w * 0.1
        for s, (name, value) in enumerate(series):
            if value is None:
                continue
            top, bottom = sorted((sy(value), sy(0.0)))
            color = PALETTE[names.index(name) % len(PALETTE)]
            parts.append(f'<rect class="mark" x="{gx + s * bar_w:.1f}" y="{top:.1f}" '
                         f'width="{max(bar_w - 2, 1):.1f}" height="{max(bottom - top, 1):.1f}" '
                         f'fill="{color}"><title>{_e(label)} {_e(name)}: {_e(fmt(value))}'
                         f'</title></rect>')
        parts.append(f'<text class="tick" x="{gx + group_w * 0.4:.1f}" y="{H - 22}" '
                     f'text-anchor="middle">{_e(label[:18])}</text>')
    legend = "" if len(names) == 1 else "".join(
        f'<span class="key"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{_e(n)}'
        f'</span>' for i, n in enumerate(names))
    rows = extra_rows or [(label, *(_fmt(v) for _, v in series)) for label, series in bars]
    return _figure(chart_id, title, _svg(chart_id, title, "".join(parts)), legend, headers,
                   rows)


def _svg(chart_id: str, title: str, body: str) -> str:
    return (f'<svg id="{_e(chart_id)}-svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-labelledby="{_e(chart_id)}-title">{body}</svg>')


def _figure(chart_id, title, svg, legend, headers, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<section class="chart" id="{_e(chart_id)}"><h2 id="{_e(chart_id)}-title">'
            f'{_e(title)}</h2><div class="pair"><div>{svg}<div class="legend">{legend}</div>'
            f'</div><table><caption>{_e(title)} (values)</caption><thead><tr>{head}</tr>'
            f'</thead><tbody>{body}</tbody></table></div></section>')


def _empty(chart_id: str, title: str) -> str:
    return (f'<section class="chart empty" id="{_e(chart_id)}"><h2 id="{_e(chart_id)}-title">'
            f'{_e(title)}</h2><p>No data for this selection.</p></section>')


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px;
color:#222;background:#fff}h1{font-size:22px;margin:0 0 4px}p.meta{color:#555;margin:0 0 16px}
section.chart{border-top:1px solid #ddd;padding:8px 0 16px}h2{font-size:16px;margin:8px 0}
.pair{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
table{border-collapse:collapse;font-size:12px}caption{text-align:left;color:#555;
font-size:12px;padding-bottom:4px}th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}
th:first-child,td:first-child{text-align:left}.legend{font-size:12px}
.key{margin-right:12px;white-space:nowrap}.key i{display:inline-block;width:10px;height:10px;
margin-right:4px}svg{max-width:100%;height:auto}svg .grid{stroke:#eee}
svg .tick{font-size:11px;fill:#555}
"""


def render(data: ReportData, warehouse_label: str, generated_ms: int) -> str:
    nps_rows = [(b, _fmt(v), f"{n:,}") for b, (v, n) in data.nps.items()]
    response_rows = [(b, _fmt(med), _fmt(p90), _fmt(rate), f"{n:,}")
                     for b, (med, p90, rate, n) in data.response.items()]
    sov_rows = [(ind, b, _fmt(p), f"{n:,}") for ind, b, p, n in data.share_of_voice]
    funnel_rows, first = [], data.funnel[0][1] if data.funnel else 0
    for step, n in data.funnel:
        funnel_rows.append((step, f"{n:,}", _fmt(100.0 * n / first) if first else "–"))
    journey_total = sum(n for _, n in data.journey)
    journey_rows = [(p, f"{n:,}", _fmt(100.0 * n / journey_total) if journey_total else "–")
                    for p, n in data.journey]
    charts = [
        line_chart("chart-sentiment", "Sentiment over time by brand (mean polarity, -1 to +1)",
                   data.sentiment, "sentiment mean"),
        bar_chart("chart-nps", "NPS by brand (% promoters - % detractors)",
                  [(b, [("NPS", v)]) for b, (v, _) in data.nps.items()],
                  ("brand", "NPS", "responses"), extra_rows=nps_rows),
        bar_chart("chart-response", "Brand response time (minutes): median and p90",
                  [(b, [("median", med), ("p90", p90)])
                   for b, (med, p90, _, _) in data.response.items()],
                  ("brand", "median min", "p90 min", "response rate %", "inbound posts"),
                  extra_rows=response_rows),
        bar_chart("chart-sov", "Share of voice (% of mentions in the competitive set)",
                  [(b, [("share of voice", p)]) for _, b, p, _ in data.share_of_voice],
                  ("competitive set", "brand", "share of voice %", "mentions"),
                  extra_rows=sov_rows),
        bar_chart("chart-funnel", "Shop funnel: sessions -> product view -> cart -> order",
                  [(s, [("sessions", float(n))]) for s, n in data.funnel],
                  ("step", "sessions", "% of sessions"), fmt=lambda v: f"{v:,.0f}",
                  extra_rows=funnel_rows),
        bar_chart("chart-journey", "Customers per journey phase",
                  [(p, [("customers", float(n))]) for p, n in data.journey],
                  ("phase", "customers", "% of customers"), fmt=lambda v: f"{v:,.0f}",
                  extra_rows=journey_rows),
    ]
    start, end = data.period
    period = (f"{_stamp(start)} to {_stamp(end)} UTC" if start is not None else "no windows")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>cx360 KPI report</title><style>{CSS}</style></head><body>"
            "<h1>cx360 customer-experience KPIs</h1>"
            f"<p class=\"meta\">Warehouse {_e(warehouse_label)}; {period}; "
            f"{data.window_seconds // 60} min windows; brands: "
            f"{_e(', '.join(data.brands) or 'none')}; generated {_stamp(generated_ms)} UTC."
            "</p>" + "".join(charts) + "</body></html>\n")


def run(args: argparse.Namespace) -> int:
    from cx360.pipelines.options import open_warehouse_arg

    now_ms = int(time.time() * 1000)
    since_ms = parse_since(args.since, now_ms)
    warehouse = open_warehouse_arg(args.warehouse, read_only=True)
    with warehouse:
        try:
            data = load(warehouse, args.brand, since_ms)
        except UserError:
            raise
        except Exception as exc:  # a warehouse the pipeline never wrote to
            raise UserError(f"no cx360 views in {warehouse.url}: {exc}") from None
        page = render(data, warehouse.url, now_ms)
    out = pathlib.Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out} ({len(page):,} bytes, 6 charts, brands: {', '.join(data.brands)})")
    return 0
