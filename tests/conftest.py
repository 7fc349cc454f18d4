"""Shared fixtures: a real local Kafka broker (Tansu) on a free loopback port, stopped by PID."""
from __future__ import annotations

import itertools
import os
import pathlib
import sys

import pytest

from cx360.pipelines.broker import LocalBroker, free_port
from cx360.transforms.kafka_io import KafkaConfig

pytest_plugins = ["conftest_services"]

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).resolve().parent / "data"
_topic_counter = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One broker for the whole test session; tests isolate themselves by topic names."""
    home = tmp_path_factory.mktemp("broker")
    instance = LocalBroker(port=free_port(), home=home)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture()
def kafka(broker) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=broker.bootstrap)


@pytest.fixture()
def topics(kafka, request) -> dict[str, str]:
    """Fresh, uniquely named topics (3 partitions; dead letters 1) for one test."""
    from cx360.pipelines.topics_cmd import create_topics

    stem = f"t{next(_topic_counter)}-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    names = {role: f"{stem}.{role}" for role in ("social", "web", "survey", "dead_letter")}
    create_topics(kafka, names, partitions=3)
    return names


def cli(*args: str, env: dict | None = None, cwd=None, timeout: float = 300):
    """Run the cx360 command line in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cx360.pipelines.cli", *args],
                          capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)
