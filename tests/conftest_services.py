"""pytest plugin: session-wide real servers for the warehouse tests (see tests/services.py).

Register it once for the whole suite with ``pytest_plugins = ["conftest_services"]`` in
tests/conftest.py; until then tests/test_warehouse_contract.py loads it itself. Installing or
starting a service that fails makes the tests that need it ERROR with the reason: nothing is
skipped. Deselect those tests with ``-m 'not services'``.
"""
from __future__ import annotations

import pytest

import services


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "services: needs a real server the tests start themselves (PostgreSQL from "
        "apt, the local-bigquery emulator from PyPI); deselect with -m 'not services'")


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL cluster on a free loopback port (password auth), stopped by PID."""
    server = services.PostgresServer(services.install_postgres()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bigquery_emulator():
    """The local-bigquery emulator on a free loopback port with an empty data dir."""
    emulator = services.BigQueryEmulator(services.install_bigquery_emulator()).start()
    yield emulator
    emulator.stop()
