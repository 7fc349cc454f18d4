"""Real servers for the warehouse contract suite: PostgreSQL and the BigQuery emulator.

Both come from the registries this project may use (Debian's apt, PyPI) and nothing else:

* PostgreSQL from apt (``postgresql``, 15 on Debian 12). Each test session runs its own
  throw-away cluster: ``initdb`` into a fresh directory, ``postgres`` on a free loopback port
  (no Unix socket), password authentication (scram-sha-256) for one user, durability switched off
  (``fsync=off``: test data only). PostgreSQL refuses to run as root, so as root both run as the
  ``postgres`` system user that the Debian package creates.
* The ``local-bigquery`` emulator (PyPI, needs Python 3.13) in its own venv, by default
  ``<repo>/.venv-bq``. It runs on DuckDB 1.5.5 and loads the ``icu``, ``ducklake`` and
  ``spatial`` extensions at start; DuckDB would download them, which fails offline, so they are
  installed from their PyPI wheels and copied into ``<venv>/duckdb-home/.duckdb/extensions/``.
  The emulator runs with ``HOME=<venv>/duckdb-home``, so the user's own ``~/.duckdb`` is left
  alone.

Every server is started on a free loopback port and stopped by its PID. Installation is
idempotent (a stamp file for the emulator venv; the binaries' presence for PostgreSQL) and fails
loudly with the reason; nothing is skipped.

Command line (what ``make test`` runs before pytest on a fresh machine)::

    python tests/services.py install            # all three; apt-get needs root
    python tests/services.py install chromium   # Debian's chromium, for the report test
    python tests/services.py install bigquery   # or: postgres
    python tests/services.py check              # start and stop each once
"""
from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
BQ_VENV = pathlib.Path(os.environ.get("CX360_BQ_VENV", REPO / ".venv-bq"))
DUCKDB_VERSION = "1.5.5"
BQ_EXTENSIONS = ("icu", "ducklake", "spatial")
BQ_REQUIREMENTS = (
    "local-bigquery==0.3.2",
    f"duckdb=={DUCKDB_VERSION}",
    *(f"duckdb-extension-{name}=={DUCKDB_VERSION}" for name in BQ_EXTENSIONS),
)


class ServiceError(RuntimeError):
    """A test service cannot be installed or started; the message says why and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ServiceError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")
    return result


def _stop_pid(process: subprocess.Popen, sig: int, timeout_s: float) -> None:
    """Signal one process we started, wait for it, kill it if it does not exit."""
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, sig)
        process.wait(timeout=timeout_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# -- PostgreSQL ------------------------------------------------------------------------------
def postgres_bin_dir() -> pathlib.Path | None:
    """The installed server's bin folder (Debian layout): 15 if present, else the newest."""
    versions = {}
    for path in glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        version = pathlib.Path(path).parent.parent.name
        if version.isdigit():
            versions[int(version)] = pathlib.Path(path).parent
    if not versions:
        return None
    return versions.get(15) or versions[max(versions)]


def _apt_install(package: str, what: str, timeout: int) -> None:
    """``apt-get install`` one Debian package (needs root; says how otherwise)."""
    if os.geteuid() != 0:
        raise ServiceError(f"{what} is not installed and installing it needs root: "
                           f"sudo apt-get update && sudo apt-get install -y {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update"], "apt-get update", env=env, timeout=600)
    _run(["apt-get", "install", "-y", "--no-install-recommends", package],
         f"apt-get install {package}", env=env, timeout=timeout)


def install_postgres() -> pathlib.Path:
    """PostgreSQL server binaries from apt, if missing (needs root)."""
    bin_dir = postgres_bin_dir()
    if bin_dir:
        return bin_dir
    _apt_install("postgresql", "PostgreSQL", timeout=900)
    bin_dir = postgres_bin_dir()
    if not bin_dir:
        raise ServiceError("apt-get installed postgresql but no /usr/lib/postgresql/*/bin/postgres")
    return bin_dir


def chromium_binary() -> str | None:
    """Debian's headless-capable Chromium (package ``chromium``), if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def install_chromium() -> str:
    """Chromium from apt, if missing (needs root): the report test renders the HTML with it."""
    exe = chromium_binary()
    if exe:
        return exe
    _apt_install("chromium", "Chromium", timeout=1800)
    exe = chromium_binary()
    if not exe:
        raise ServiceError("apt-get installed chromium but there is no chromium on PATH")
    return exe


@dataclasses.dataclass
class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1:port; ``url`` carries no password (tests pass
    it in the URL or as PGPASSWORD)."""

    bin_dir: pathlib.Path
    host: str = "127.0.0.1"
    port: int = 0
    user: str = "cx360"
    password: str = dataclasses.field(default_factory=lambda: secrets.token_hex(12))
    data_dir: pathlib.Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def _as_owner(self) -> dict:
        """Popen arguments that run a command as the cluster's owner."""
        if os.geteuid() != 0:
            return {}
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError("running as root, but there is no 'postgres' user to run the "
                               "server as (the Debian postgresql package creates it)") from None
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self, timeout_s: float = 30.0) -> "PostgresServer":
        owner = self._as_owner()
        self.port = self.port or free_port(self.host)
        root = pathlib.Path(tempfile.mkdtemp(prefix="cx360-pg-"))
        self.data_dir = root / "data"
        pwfile = root / "pw"
        pwfile.write_text(self.password + "\n")
        if owner:
            os.chown(root, owner["user"], owner["group"])
            os.chown(pwfile, owner["user"], owner["group"])
        pwfile.chmod(0o600)
        try:
            _run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                  "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8",
                  "--no-locale", "--no-sync"], "initdb", cwd=root, timeout=120, **owner)
        finally:
            pwfile.unlink(missing_ok=True)
        log = open(root / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories=",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=50"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
            start_new_session=True, **owner)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"postgres exited at start (code {self.process.returncode}):\n"
                                   + (root / "postgres.log").read_text()[-2000:])
            ready = subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", self.host,
                                    "-p", str(self.port)], capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"postgres not ready on port {self.port} after {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None:
            _stop_pid(self.process, signal.SIGINT, 20)  # SIGINT = fast shutdown
            self.process = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)
            self.data_dir = None


# -- BigQuery emulator -----------------------------------------------------------------------
def find_python313() -> str:
    """A working Python 3.13 interpreter: $CX360_PYTHON313, python3.13 on PATH, or pyenv's."""
    candidates = [os.environ.get("CX360_PYTHON313"), shutil.which("python3.13"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")),
                          reverse=True),
                  "/usr/local/bin/python3.13", "/usr/bin/python3.13"]
    for candidate in candidates:
        if not candidate or not os.path.exists(candidate):
            continue
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 13)":
            return candidate
    raise ServiceError("the BigQuery emulator (local-bigquery) needs Python 3.13 and none was "
                       "found: set CX360_PYTHON313=/path/to/python3.13")


def extension_dir(venv: pathlib.Path = BQ_VENV) -> pathlib.Path:
    return venv / "duckdb-home" / ".duckdb" / "extensions" / f"v{DUCKDB_VERSION}" / "linux_amd64"


def install_bigquery_emulator(venv: pathlib.Path = BQ_VENV) -> pathlib.Path:
    """The emulator's venv with pinned packages and DuckDB extensions; returns its executable."""
    stamp = venv / ".cx360-installed"
    wanted = "\n".join(BQ_REQUIREMENTS) + "\n"
    exe = venv / "bin" / "local-bigquery"
    if (stamp.exists() and stamp.read_text() == wanted and exe.exists()
            and all((extension_dir(venv) / f"{n}.duckdb_extension").exists()
                    for n in BQ_EXTENSIONS)):
        return exe
    python = venv / "bin" / "python"
    if not python.exists():
        _run([find_python313(), "-m", "venv", str(venv)], "creating the emulator venv",
             timeout=300)
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *BQ_REQUIREMENTS], "pip install of the BigQuery emulator", timeout=900)
    target = extension_dir(venv)
    target.mkdir(parents=True, exist_ok=True)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                "locating the emulator's site-packages").stdout.strip()
    for name in BQ_EXTENSIONS:
        source = (pathlib.Path(site) / f"duckdb_extension_{name}" / "extensions"
                  / f"v{DUCKDB_VERSION}" / f"{name}.duckdb_extension")
        if not source.exists():
            raise ServiceError(f"the wheel duckdb-extension-{name}=={DUCKDB_VERSION} has no "
                               f"{source.name} where expected ({source})")
        shutil.copyfile(source, target / source.name)
    stamp.write_text(wanted)
    return exe


@dataclasses.dataclass
class BigQueryEmulator:
    """local-bigquery on 127.0.0.1 (REST on ``port``, gRPC on ``grpc_port``)."""

    executable: pathlib.Path
    project: str = "cx360-test"
    host: str = "127.0.0.1"
    port: int = 0
    grpc_port: int = 0
    data_dir: pathlib.Path | None = None
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "BigQueryEmulator":
        self.port = self.port or free_port(self.host)
        self.grpc_port = self.grpc_port or free_port(self.host)
        self.data_dir = pathlib.Path(tempfile.mkdtemp(prefix="cx360-bq-"))
        venv = self.executable.parent.parent
        env = dict(os.environ, HOME=str(venv / "duckdb-home"))
        log = open(self.data_dir / "emulator.log", "ab")
        self.process = subprocess.Popen(
            [str(self.executable), "serve", "--host", self.host, "--port", str(self.port),
             "--grpc-port", str(self.grpc_port), "--project", self.project,
             "--dataset", "cx360_default", "--data-dir", str(self.data_dir / "data")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=self.data_dir, start_new_session=True)
        log.close()
        # Listing datasets opens the emulator's database (extensions included): a real check.
        probe = f"{self.endpoint}/bigquery/v2/projects/{self.project}/datasets"
        deadline, last = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(probe, timeout=5) as response:
                    if response.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[:500]
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        log_text = (self.data_dir / "emulator.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise ServiceError(f"the BigQuery emulator did not come up on {self.endpoint}: "
                           f"{last}\n{log_text}")

    def stop(self) -> None:
        if self.process is not None:
            _stop_pid(self.process, signal.SIGTERM, 15)
            self.process = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "install"
    which = argv[1:] or ["postgres", "bigquery", "chromium"]
    if command not in ("install", "check") or set(which) - {"postgres", "bigquery", "chromium"}:
        print(__doc__)
        return 2
    try:
        for name in which:
            if name == "postgres":
                bin_dir = install_postgres()
                print(f"postgres: {bin_dir}")
                if command == "check":
                    server = PostgresServer(bin_dir).start()
                    print(f"postgres: ready at {server.url}")
                    server.stop()
            elif name == "chromium":
                print(f"chromium: {install_chromium()}")
            else:
                exe = install_bigquery_emulator()
                print(f"bigquery emulator: {exe}")
                if command == "check":
                    emulator = BigQueryEmulator(exe).start()
                    print(f"bigquery emulator: ready at {emulator.endpoint}")
                    emulator.stop()
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
