"""The command line: local broker management, topics, and one-line errors for wrong input."""
import pytest

from cx360.pipelines.broker import LocalBroker, free_port, port_open
from conftest import cli


def assert_one_line_error(done, *fragments):
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_broker_start_status_stop(tmp_path):
    port = free_port()
    env = {"CX360_HOME": str(tmp_path)}
    started = cli("broker", "start", "--port", str(port), env=env)
    assert started.returncode == 0, started.stderr
    assert port_open("127.0.0.1", port)
    pid = LocalBroker(port=port, home=tmp_path).pid()
    assert pid and (tmp_path / "broker.pid").read_text().split()[0] == str(pid)
    assert cli("broker", "status", "--port", str(port), env=env).returncode == 0
    # Starting again finds the running one instead of starting a second broker.
    again = cli("broker", "start", "--port", str(port), env=env)
    assert "already running" in again.stdout and f"pid {pid}" in again.stdout
    stopped = cli("broker", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not port_open("127.0.0.1", port)
    assert not (tmp_path / "broker.pid").exists()
    assert cli("broker", "status", env=env).returncode == 1


def test_topics_create_is_idempotent_and_configurable(kafka):
    args = ["topics", "create", "--bootstrap-servers", kafka.bootstrap_servers,
            "--social-topic", "cli.s", "--web-topic", "cli.w", "--survey-topic", "cli.v",
            "--dead-letter-topic", "cli.d", "--partitions", "2"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.split()) == sorted(["created", "cli.s", "created", "cli.w",
                                                   "created", "cli.v", "created", "cli.d"])
    second = cli(*args)
    assert second.stdout.count("exists") == 4
    from cx360.transforms.kafka_io import list_partitions
    assert list_partitions(kafka, ["cli.s", "cli.d"]) == {"cli.s": [0, 1], "cli.d": [0]}


@pytest.mark.parametrize("args,fragment", [
    (["run", "--once", "--bootstrap-servers", "127.0.0.1:1"], "cannot reach Kafka"),
    (["run", "--once", "--warehouse", "oracle://db"], "unsupported warehouse URL"),
    (["run", "--once", "--windows", "1fortnight"], "not a duration"),
    (["run", "--once", "--windows", "7m"], "window sizes must divide a day"),
    (["run", "--once", "--sliding", "1d"], "needs SIZE/PERIOD"),
    (["run", "--once", "--sliding", "1h/25m"], "need a period shorter than the size that divides"),
    (["run", "--once", "--social-topic", "same", "--web-topic", "same"], "its own topic"),
    (["run", "--once", "--security-protocol", "SASL_SSL"], "SASL needs a mechanism"),
    (["run", "--once", "--schema-registry", "/nonexistent"], "has no registry.json"),
    (["topics", "create", "--bootstrap-servers", "127.0.0.1:1"], "cannot reach Kafka"),
    (["run", "--once", "--from", "yesterday-ish"], "expected committed, earliest or an ISO"),
    (["run", "--once", "--from", "cx.nope=earliest"], "is not one of the event topics"),
])
def test_wrong_input_gives_a_one_line_error(args, fragment, tmp_path):
    if "--warehouse" not in args:
        args = [*args, "--warehouse", f"duckdb:{tmp_path}/w.duckdb"] if args[0] == "run" else args
    assert_one_line_error(cli(*args, cwd=tmp_path), fragment)


def test_unknown_option_value_is_rejected_by_argparse(tmp_path):
    done = cli("run", "--once", "--runner", "SparkRunner", cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice" in done.stderr
    assert "Traceback" not in done.stderr


def test_secrets_never_reach_the_logs(tmp_path):
    secret = "s3cr3t-Pa55"
    done = cli("--log-level", "DEBUG", "run", "--once", "--bootstrap-servers", "127.0.0.1:1",
               "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN",
               "--sasl-username", "svc", "--warehouse", f"duckdb:{tmp_path}/w.duckdb",
               env={"CX360_KAFKA_SASL_PASSWORD": secret}, cwd=tmp_path)
    assert done.returncode == 2
    assert secret not in done.stdout + done.stderr
