"""Operations: health checks and their exit codes, Prometheus metrics, dead-letter replay,
the wheel's contents, and the deployment files' consistency with the command line."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile

import duckdb
import pytest
import yaml

from conftest import DATA, REPO, cli
from cx360.schemas.codec import AvroCodec
from cx360.schemas.registry import SOCIAL, FileSchemaRegistry
from kafka_helpers import produce

V1 = AvroCodec(FileSchemaRegistry())
V2 = AvroCodec(FileSchemaRegistry([DATA / "schemas_v2"]))  # newest SocialEvent: id 101


def social(codec, i: int, event_time_ms: int, brand="Nordwind") -> tuple[bytes, bytes]:
    return f"k{i}".encode(), codec.encode(SOCIAL, {
        "event_id": f"ev-{i}", "event_type": "post", "event_time": event_time_ms,
        "platform": "x", "brand": brand, "author_handle": f"@u{i}", "post_id": f"p{i}"})


def topic_args(topics, kafka):
    return ["--social-topic", topics["social"], "--web-topic", topics["web"],
            "--survey-topic", topics["survey"], "--dead-letter-topic", topics["dead_letter"],
            "--bootstrap-servers", kafka.bootstrap_servers]


def health(warehouse, topics, kafka, *extra):
    done = cli("health", "--json", "--warehouse", f"duckdb:{warehouse}",
               *topic_args(topics, kafka), *extra, timeout=120)
    report = json.loads(done.stdout)
    return done.returncode, {c["check"]: c for c in report["checks"]}


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_health_is_ok_while_the_pipeline_keeps_up_and_critical_when_it_stops(kafka, topics,
                                                                              tmp_path):
    now = int(time.time() * 1000)
    produce(kafka, topics["social"], [social(V1, i, now - 60_000) for i in range(30)])
    warehouse = tmp_path / "wh.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cx360.pipelines.cli", "--log-json", "--log-level", "INFO",
         "run", "--metrics-port", "0", "--interval", "0.5", "--warehouse",
         f"duckdb:{warehouse}", *topic_args(topics, kafka)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r":(\d+)/metrics", proc.stderr.readline()).group(1))
        deadline, metrics = time.monotonic() + 90, {}
        while metrics.get("cx360_batches_total", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
            metrics = scrape(port)
        social_lag = sum(v for k, v in metrics.items()
                         if k.startswith("cx360_consumer_lag{") and topics["social"] in k)
        assert metrics[f'cx360_records_read_total{{topic="{topics["social"]}"}}'] == 30
        assert social_lag == 0
        assert 0 < metrics[f'cx360_freshness_seconds{{topic="{topics["social"]}"}}'] < 600
        # A health probe while the pipeline runs: readers and the writer take turns.
        code, checks = health(warehouse, topics, kafka)
        assert code == 0 and proc.poll() is None, checks
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    applied = [e for e in logged if e.get("event") == "batch_applied"]
    assert applied and applied[0]["read"] == {topics["social"]: 30} and applied[0]["lag"] == 0
    # The event-time watermark proxy as a Beam metric (distribution max) of the batch.
    assert applied[0]["event_time_max_ms"] == {topics["social"]: now - 60_000}

    con = duckdb.connect(str(warehouse), read_only=True)
    rows = con.execute("SELECT partition, records_in, accepted, dead_letters, lag FROM "
                       "pipeline_health WHERE topic = ? ORDER BY partition",
                       [topics["social"]]).fetchall()
    con.close()
    assert len(rows) == 3 and sum(r[1] for r in rows) == 30 and sum(r[2] for r in rows) == 30
    assert all(r[3] == 0 and r[4] == 0 for r in rows)
    # Only social events arrived: the other topics have none, so widen nothing but check
    # that social alone is judged fresh (the stalest topic is the one that has events).
    code, checks = health(warehouse, topics, kafka)
    assert (code, checks["lag"]["value"], checks["freshness"]["status"]) == (0, 0, "OK")

    # The pipeline is stopped, events keep arriving: lag becomes critical.
    produce(kafka, topics["social"], [social(V1, i, now) for i in range(100, 160)])
    code, checks = health(warehouse, topics, kafka, "--warn-lag", "10", "--max-lag", "50")
    assert code == 2 and checks["lag"]["status"] == "CRITICAL" and checks["lag"]["value"] == 60
    code, checks = health(warehouse, topics, kafka, "--warn-lag", "10", "--max-lag", "100")
    assert code == 1 and checks["lag"]["status"] == "WARN"


def test_health_flags_stale_data_and_a_dead_letter_spike(kafka, topics, tmp_path):
    three_hours_ago = int(time.time() * 1000) - 3 * 3_600_000
    good = [social(V1, i, three_hours_ago) for i in range(16)]
    bad = [(b"x", b"{oops"), (b"y", b"plain text"), (b"z", None), (b"w", b"{oops")]
    produce(kafka, topics["social"], good + bad)
    warehouse = tmp_path / "wh.duckdb"
    done = cli("run", "--once", "--json", "--warehouse", f"duckdb:{warehouse}",
               *topic_args(topics, kafka))
    assert done.returncode == 0, done.stderr
    code, checks = health(warehouse, topics, kafka)
    assert code == 2
    assert checks["freshness"]["status"] == "CRITICAL" and checks["lag"]["status"] == "OK"
    assert checks["dead_letter_rate"]["status"] == "CRITICAL"
    assert checks["dead_letter_rate"]["value"] == pytest.approx(4 / 20)
    # Thresholds are configurable: 20 % dead letters only warn below a 25 % limit.
    code, checks = health(warehouse, topics, kafka, "--max-staleness", "1d",
                          "--warn-staleness", "12h", "--warn-dead-letter-rate", "10%",
                          "--max-dead-letter-rate", "25%")
    assert code == 1 and checks["dead_letter_rate"]["status"] == "WARN"
    assert checks["freshness"]["status"] == "OK"


def test_health_reports_a_warehouse_held_by_a_writer(kafka, topics, tmp_path):
    warehouse = tmp_path / "locked.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('ready', "
        "flush=True); time.sleep(60)"), str(warehouse)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        done = cli("health", "--lock-timeout", "0.5", "--warehouse", f"duckdb:{warehouse}",
                   *topic_args(topics, kafka), timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, done.stderr
    assert "held by a writer" in done.stdout


def _social_counts(warehouse) -> int:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute("SELECT coalesce(sum(events), 0) FROM event_counts WHERE "
                           "window_seconds = 3600 AND event_kind = 'social'").fetchone()[0]
    finally:
        con.close()


def test_replayed_dead_letters_count_once_in_the_kpis(kafka, topics, tmp_path):
    t = int(time.time() * 1000) - 3_600_000
    # 6 events written with SocialEvent v2 (schema id 101, unknown to the default registry),
    # 4 with v1, and 2 records that no schema will ever fix.
    records = ([social(V2, i, t) for i in range(6)] + [social(V1, i, t) for i in range(10, 14)]
               + [(b"a", b"{oops"), (b"b", b"garbage")])
    produce(kafka, topics["social"], records)
    warehouse = tmp_path / "wh.duckdb"
    args = ["--warehouse", f"duckdb:{warehouse}", *topic_args(topics, kafka)]
    done = cli("run", "--once", "--json", *args)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout.splitlines()[-1])["topics"][topics["social"]]
    assert (first["accepted"], first["dead_letters"]) == (4, 8)
    assert first["dead_letters_by_reason"]["unknown_schema_id"] == 6
    assert _social_counts(warehouse) == 4

    replay = ["replay-dead-letters", "--json", "--schema-registry", str(DATA / "schemas_v2"),
              *args]
    done = cli(*replay)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["topics"][topics["social"]] == {
        "replayed": 8, "accepted": 6, "duplicates": 0, "still_dead": 2,
        "still_dead_by_reason": {"invalid_json": 1, "undecodable": 1}, "reconciled": True}
    assert _social_counts(warehouse) == 4 + 6

    con = duckdb.connect(str(warehouse), read_only=True)
    resolution = dict(con.execute("SELECT coalesce(resolution, 'dead'), count(*) FROM "
                                  "dead_letters GROUP BY ALL").fetchall())
    con.close()
    assert resolution == {"replayed": 6, "dead": 2}

    # Again, and from the earliest dead letter: nothing counts twice.
    for extra in ([], ["--from", "earliest"]):
        done = cli(*replay, *extra)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["accepted"] == 0
    assert _social_counts(warehouse) == 10
    # The pipeline itself leaves replay batches alone and finds nothing new.
    done = cli("run", "--once", "--json", *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["records_read"] == 0
    assert _social_counts(warehouse) == 10


# -- packaging ----------------------------------------------------------------------------------
def test_the_wheel_carries_every_data_file_and_runs(tmp_path):
    # Built from a copy: setuptools' build/ folder in the repository could hold stale files
    # (and other builds may run at the same time).
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".venv*", "build", "dist", "*.egg-info", "__pycache__", ".git",
                                  ".pytest_cache", "*.duckdb*")
    shutil.copytree(REPO, source, ignore=lambda folder, names: skip(folder, names) | (
        {"data", "bench"} & set(names) if pathlib.Path(folder) == REPO else set()))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                           capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("cx360-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, package in (("schemas", "cx360/schemas"), ("transforms", "cx360/transforms"),
                            ("pipelines", "cx360/pipelines")):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                expected.add(f"{package}/{path.relative_to(REPO / folder).as_posix()}")
    assert not expected - names, sorted(expected - names)

    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    site = [p for p in sys.path if p.endswith("site-packages")]
    # -S: no .pth files, so the editable install of the repository is not importable; the
    # wheel's copy and the dependencies of this venv are.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(unpacked), *site]))
    base = [sys.executable, "-S", "-m", "cx360.pipelines.cli"]
    where = subprocess.run([sys.executable, "-S", "-c", "import cx360; print(cx360.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.stdout.startswith(str(unpacked)), where.stdout + where.stderr
    helped = subprocess.run([*base, "--help"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert helped.returncode == 0 and "replay-dead-letters" in helped.stdout, helped.stderr
    scored = subprocess.run([*base, "sentiment", "--no-text"], input="Lieferung kam kaputt an\n"
                            "Love it, great service :)\n", capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert scored.returncode == 0, scored.stderr
    labels = [json.loads(line)["label"] for line in scored.stdout.splitlines()]
    assert labels == ["negative", "positive"]


# -- deployment files -----------------------------------------------------------------------------
def _stream_parser():
    from cx360.pipelines.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices["stream"]


def _stream_options() -> set[str]:
    return {opt for action in _stream_parser()._actions for opt in action.option_strings}


def test_flex_template_parameters_are_options_of_cx360_stream():
    metadata = json.loads((REPO / "deploy/dataflow/metadata.json").read_text())
    options = _stream_options()
    names = [p["name"] for p in metadata["parameters"]]
    assert len(names) == len(set(names))
    for param in metadata["parameters"]:
        flag = "--" + param["name"].replace("_", "-")
        assert flag in options, flag
        for regex in param.get("regexes", []):
            re.compile(regex)
    stream = _stream_parser()
    for param in metadata["parameters"]:  # the command's own defaults pass the validation
        if param["name"] == "warehouse":  # on Dataflow only BigQuery, not the local default
            assert not re.fullmatch(param["regexes"][0], stream.get_default("warehouse"))
            assert re.fullmatch(param["regexes"][0], "bigquery://my-proj/cx360")
            continue
        default = stream.get_default(param["name"])
        if default not in (None, "") and param.get("regexes"):
            assert re.fullmatch(param["regexes"][0], str(default)), (param["name"], default)
    by_name = {p["name"]: p for p in metadata["parameters"]}
    assert re.fullmatch(by_name["kafka_source"]["regexes"][0], "java")
    assert not re.fullmatch(by_name["kafka_source"]["regexes"][0], "scala")
    sys.path.insert(0, str(REPO / "deploy/dataflow"))
    try:
        from launcher import translate
    finally:
        sys.path.pop(0)
    argv = translate(["--kafka_source=java", "--windows=1h,1d", "--project=p", "--runner=X",
                      "--sliding="], set(names))
    assert argv == ["stream", "--runner", "DataflowRunner", "--kafka-source", "java",
                    "--windows", "1h,1d", "--", "--project=p"]
    stream = _stream_parser()
    args = stream.parse_args(argv[1:])
    assert (args.kafka_source, args.windows, args.beam_args) == ("java", "1h,1d", ["--project=p"])


def test_monitoring_and_flink_files_parse_and_use_the_exported_metrics():
    rules = yaml.safe_load((REPO / "deploy/monitoring/alerts.yml").read_text())
    exported = set(re.findall(r'"(cx360_[a-z_]+)"',
                              (REPO / "pipelines/metrics.py").read_text()))
    exported |= {f"{name}_total" for name in exported}
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            used |= set(re.findall(r"cx360_[a-z_]+", rule["expr"]))
    dashboard = json.loads((REPO / "deploy/monitoring/grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"cx360_[a-z_]+", target["expr"]))
    assert used and used <= exported, used - exported
    for path in (REPO / "deploy/flink").glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs and all("kind" in d and "apiVersion" in d for d in docs), path


def test_flink_cluster_and_job_server_are_a_pair_this_beam_publishes():
    """The Flink version of the cluster, the job server image and the installed Beam SDK must
    match: Beam publishes one job server per supported Flink minor version and release."""
    import apache_beam
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    cluster = yaml.safe_load((REPO / "deploy/flink/flink-deployment.yaml").read_text())
    flink = cluster["spec"]["flinkVersion"]                      # e.g. v1_19
    minor = flink.removeprefix("v").replace("_", ".")
    assert cluster["spec"]["image"].startswith(f"flink:{minor}")
    assert minor in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    images = [c["image"]
              for d in yaml.safe_load_all((REPO / "deploy/flink/beam-job-server.yaml").read_text())
              if d and d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert images == [f"apache/beam_flink{minor}_job_server:{apache_beam.__version__}"]
    # The SDK worker image (Dataflow and the Flink sidecar) is built on the same Beam release.
    dockerfile = (REPO / "deploy/dataflow/Dockerfile").read_text()
    assert re.search(rf"^ARG BEAM_VERSION={re.escape(apache_beam.__version__)}$", dockerfile,
                     re.M), "deploy/dataflow/Dockerfile: BEAM_VERSION differs from the SDK"
