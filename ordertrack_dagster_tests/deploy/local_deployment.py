"""The production layout of deploy/, run here without containers.

A real PostgreSQL server, the gRPC code server, the daemon and the webserver each run as their
own process, all reading deploy/dagster.yaml and deploy/workspace.yaml unchanged, with the
embedded stack standing in for MongoDB, S3 and the couriers. Every process runs in its own
process group, and leaving a context manager stops the group, on failure too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg2

from ordertrack_dagster.devstack.stack import HOST, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT_ROOT / "deploy"
LOCATION = "ordertrack"
REPOSITORY = "__repository__"
PG_USER = "dagster"
PG_PASSWORD = "deploy-check-password"
PG_DB = "dagster"
START_TIMEOUT = 90.0


class DeploymentError(RuntimeError):
    """A process of the local deployment failed to start."""


def postgres_bin() -> Path:
    """The newest PostgreSQL server of the Debian packages (`postgresql`)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    if not found:
        raise DeploymentError("no PostgreSQL server: apt-get install -y postgresql")
    return found[-1].parent


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` system user."""
    return "postgres" if os.geteuid() == 0 else None


def _stop_group(process: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """Signal the process group, give it 15 s, then kill whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def process_group(
    command: list[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own group, logging to `log`; the group is stopped on exit."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )
    try:
        yield process
    finally:
        _stop_group(process, stop_signal)


def _wait_until(ready: Any, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise DeploymentError(f"{what} exited ({process.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise DeploymentError(f"{what} did not answer in {START_TIMEOUT:.0f} s:\n{tail(log)}")
        time.sleep(0.25)


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Postgres:
    port: int

    @property
    def env(self) -> dict[str, str]:
        """The settings deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": HOST,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": PG_DB,
            "DAGSTER_PG_USERNAME": PG_USER,
            "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        }

    def connect(self, database: str = PG_DB) -> Any:
        return psycopg2.connect(
            host=HOST, port=self.port, user=PG_USER, password=PG_PASSWORD, dbname=database
        )

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.connect()) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())


@contextlib.contextmanager
def postgres_server(logs: Path) -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free loopback port, password-protected, removed on exit.

    Its directory is a new temporary one owned by the server's user: as root that is
    `postgres`, which cannot enter root's private temporary folders.
    """
    user = _server_user()
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="ordertrack-pg-"))
    try:
        if user is not None:
            account = pwd.getpwnam(user)
            os.chown(root, account.pw_uid, account.pw_gid)
        password_file = root / "password"
        password_file.write_text(PG_PASSWORD)
        if user is not None:
            os.chown(password_file, account.pw_uid, account.pw_gid)
        data = root / "data"
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "scram-sha-256",
             f"--pwfile={password_file}", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, user=user, cwd=root,
        )  # fmt: skip
        port = free_port()
        command = [
            str(bin_dir / "postgres"), "-D", str(data), "-h", HOST, "-p", str(port),
            "-k", str(root), "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        log = logs / "postgres.log"
        # SIGINT is PostgreSQL's fast shutdown: it ends the sessions instead of waiting for them.
        with process_group(command, log, user=user, cwd=root, stop_signal=signal.SIGINT) as pg:
            server = Postgres(port)
            _wait_until(lambda: _accepts(server), pg, log, "postgres")
            with contextlib.closing(server.connect("postgres")) as connection:
                connection.autocommit = True
                connection.cursor().execute(f"CREATE DATABASE {PG_DB}")
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _accepts(server: Postgres) -> bool:
    try:
        server.connect("postgres").close()
    except psycopg2.OperationalError:
        return False
    return True


def _command(script: str, *args: str) -> list[str]:
    """A console script of this environment, run by this interpreter (no PATH lookup)."""
    return [sys.executable, str(Path(sys.executable).parent / script), *args]


@dataclass(frozen=True)
class Deployment:
    """The running deployment: where its webserver answers, its Postgres, its logs."""

    webserver_url: str
    postgres: Postgres
    logs: Path
    home: Path

    def graphql(self, query: str, **variables: object) -> dict[str, Any]:
        response = httpx.post(
            f"{self.webserver_url}/graphql",
            json={"query": query, "variables": variables},
            timeout=30.0,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return dict(body["data"])

    def all_logs(self) -> str:
        """The end of every process's log, for a failure message."""
        return "\n".join(f"--- {log.name} ---\n{tail(log, 30)}" for log in self.logs.glob("*.log"))


@contextlib.contextmanager
def local_deployment(
    stack_env: Mapping[str, str], workdir: Path, code_module: str
) -> Iterator[Deployment]:
    """Postgres, the instance migration, then code server, daemon and webserver, from deploy/.

    `code_module` is the module the code server loads (the image's is
    `ordertrack_dagster.definitions`).
    """
    logs = workdir / "logs"
    home = workdir / "dagster_home"
    logs.mkdir(parents=True)
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    code_port, web_port = free_port(), free_port()
    with contextlib.ExitStack() as running:
        postgres = running.enter_context(postgres_server(logs))
        env = {
            **os.environ,
            **stack_env,
            **postgres.env,
            "DAGSTER_HOME": str(home),
            "ORDERTRACK_CODE_SERVER_HOST": HOST,
            "ORDERTRACK_CODE_SERVER_PORT": str(code_port),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
            ),
        }
        # What an upgrade runs first (docs/operations.md): create or migrate the schema.
        subprocess.run(
            _command("dagster", "instance", "migrate"),
            env=env, cwd=home, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        grpc_args = ("api", "grpc", "-m", code_module, "--host", HOST, "--port", str(code_port))
        code_log = logs / "code_server.log"
        code_server = running.enter_context(
            process_group(_command("dagster", *grpc_args), code_log, env=env, cwd=home)
        )
        # The port opens once the definitions are loaded; then the probe a container's health
        # check runs (one `dagster` process, not one per poll: each costs seconds of CPU).
        _wait_until(lambda: _listens(code_port), code_server, code_log, "the code server")
        health = _command("dagster", "api", "grpc-health-check", "--host", HOST)
        health += ["--port", str(code_port)]
        _wait_until(
            lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0,
            code_server,
            code_log,
            "the code server",
        )
        workspace = ("-w", str(DEPLOY / "workspace.yaml"))
        daemon = running.enter_context(
            process_group(
                _command("dagster-daemon", "run", *workspace), logs / "daemon.log", env=env,
                cwd=home,
            )
        )  # fmt: skip
        web_log = logs / "webserver.log"
        webserver = running.enter_context(
            process_group(
                _command("dagster-webserver", *workspace, "-h", HOST, "-p", str(web_port)),
                web_log, env=env, cwd=home,
            )
        )  # fmt: skip
        url = f"http://{HOST}:{web_port}"
        _wait_until(lambda: _answers(f"{url}/server_info"), webserver, web_log, "the webserver")
        # Dagster's three processes stop side by side (each may take seconds), then Postgres.
        running.callback(_stop_groups, [webserver, daemon, code_server])
        yield Deployment(url, postgres, logs, home)


def _stop_groups(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stop the groups side by side, not one after another (each `process_group` exit then
    finds its group gone)."""
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(lambda process: _stop_group(process, signal.SIGTERM), processes))


def _listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
