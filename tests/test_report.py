"""`cx360 report`: one self-contained HTML file whose charts render in headless Chromium with
the network switched off. Chromium is Debian's ``chromium`` package (installed by
``python tests/services.py install chromium``, which ``make test`` runs)."""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from PIL import Image

import services
from cx360.pipelines.generator import GeneratorConfig, generate
from cx360.pipelines.report_cmd import parse_since, quantile
from conftest import cli
from kafka_helpers import produce

CHARTS = ("chart-sentiment", "chart-nps", "chart-response", "chart-sov", "chart-funnel",
          "chart-journey")


@pytest.fixture(scope="module")
def warehouse(broker, tmp_path_factory):
    """A DuckDB warehouse after `run --once` over ~600 generated events."""
    from cx360.pipelines.topics_cmd import create_topics
    from cx360.transforms.kafka_io import KafkaConfig

    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
    topics = {r: f"report.{r}" for r in ("social", "web", "survey", "dead_letter")}
    create_topics(kafka, topics, partitions=3)
    now = int(time.time() * 1000)
    start = (now - 30 * 3_600_000) // 3_600_000 * 3_600_000
    records = list(generate(GeneratorConfig(seed=3, events=600, start_ms=start,
                                            duration_s=24 * 3600, now_ms=now)))
    for role in ("social", "web", "survey"):
        produce(kafka, topics[role], [(r.key, r.value) for r in records if r.role == role])
    url = f"duckdb:{tmp_path_factory.mktemp('report')}/w.duckdb"
    args = ["run", "--once", "--json", "--warehouse", url, "--bootstrap-servers",
            broker.bootstrap]
    for role, topic in topics.items():
        args += [f"--{role.replace('_', '-')}-topic", topic]
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["reconciled"]
    return url


@pytest.fixture(scope="module")
def chromium():
    try:
        return services.install_chromium()
    except services.ServiceError as exc:
        pytest.skip(f"Debian's chromium cannot be installed here: {exc}")


def test_the_report_renders_every_chart_offline_in_headless_chromium(warehouse, chromium,
                                                                     tmp_path):
    out = tmp_path / "report.html"
    done = cli("report", "--out", str(out), "--warehouse", warehouse)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    # Self-contained: nothing to fetch (no src/href URL, no script, no @import or url()).
    assert re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I) == []
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    shot = tmp_path / "report.png"
    offline = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
               "--proxy-bypass-list=<-loopback>", "--disable-background-networking",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([chromium, *offline, f"--screenshot={shot}", "--window-size=1280,3000",
                    out.as_uri()], capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 3000)
    colours = image.getcolors(maxcolors=1_000_000)
    assert len(colours) > 20  # charts, text and tables; a blank page has one colour
    # The chart palette's first colour (#1f77b4) is drawn: SVG marks really rendered.
    assert any(c == (0x1f, 0x77, 0xb4) for _, c in colours)
    dom = subprocess.run([chromium, *offline, "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for chart in CHARTS:
        section = re.search(rf'<section class="chart" id="{chart}">(.*?)</section>', dom, re.S)
        assert section, f"{chart} missing or empty"
        svg = re.search(r"<svg.*?</svg>", section.group(1), re.S)
        assert svg, chart
        marks = len(re.findall(r'<(?:rect|path|circle) class="mark"', svg.group(0)))
        assert marks > 0, chart
        assert "<table>" in section.group(1), chart  # the values beside the chart


def test_the_report_tables_hold_the_warehouse_values(warehouse, tmp_path):
    out = tmp_path / "report.html"
    assert cli("report", "--out", str(out), "--warehouse", warehouse).returncode == 0
    page = out.read_text()
    import duckdb

    con = duckdb.connect(warehouse.split(":", 1)[1], read_only=True)
    try:
        # Funnel over the smallest windows = the sessions of the whole period, counted directly.
        sessions, viewed, carted, ordered = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE viewed_product), count(*) FILTER (WHERE "
            "added_to_cart), count(*) FILTER (WHERE converted) FROM web_sessions").fetchone()
        nps = con.execute(
            "SELECT brand, 100.0 * (count(*) FILTER (WHERE score >= 9) - count(*) FILTER "
            "(WHERE score <= 6)) / count(*) FROM customer_touchpoints WHERE survey_type = "
            "'NPS' GROUP BY brand ORDER BY brand").fetchall()
    finally:
        con.close()
    funnel = re.search(r'id="chart-funnel".*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    cells = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", funnel)
    assert cells == [("sessions", f"{sessions:,}"), ("product view", f"{viewed:,}"),
                     ("cart", f"{carted:,}"), ("order", f"{ordered:,}")]
    assert sessions > viewed > 0 and ordered > 0
    nps_table = re.search(r'id="chart-nps".*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    shown = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", nps_table)
    assert shown == [(brand, f"{value:,.1f}") for brand, value in nps]


def test_brand_and_since_filters_and_bad_input(warehouse, tmp_path):
    out = tmp_path / "one.html"
    done = cli("report", "--out", str(out), "--warehouse", warehouse, "--brand", "Kaffino",
               "--since", "2000-01-01")
    assert done.returncode == 0, done.stderr
    sentiment = re.search(r'id="chart-sentiment".*?<tbody>(.*?)</tbody>', out.read_text(),
                          re.S).group(1)
    assert {b for b in re.findall(r"<tr><td>([^<]*)</td>", sentiment)} <= {"Kaffino"}
    bad = cli("report", "--out", str(out), "--warehouse", warehouse, "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_quantile_and_since_parsing():
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5  # between ranks 2 and 3
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9) == \
        pytest.approx(9.1)
    assert quantile([], 0.5) is None
    assert parse_since("2026-11-01", 0) == 1793491200000
    assert parse_since("7d", 10 * 86_400_000) == 3 * 86_400_000
