"""The embedded stack: every server the product talks to, run locally on free ports.

SecantusDB (MongoDB wire protocol), moto's S3, an SMTP mailbox, the Slack and CRM stand-ins
and the courier simulator each run as a child process in its own process group, so that
leaving the `with` block (normally, on an exception or on Ctrl-C) stops all of them and
nothing they started, and on Linux they also die with the process that started them.
`stack.env` is the contract §8 environment pointing at them.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

import boto3
import httpx
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from ordertrack_dagster.devstack.mailbox import read_mailbox
from ordertrack_dagster.devstack.processes import spawn_group, stop_groups
from ordertrack_dagster.devstack.simulator import SimulatorAdmin, simulator_env

Service = Literal["mongodb", "s3", "smtp", "slack", "crm", "simulator"]
SERVICES: tuple[Service, ...] = get_args(Service)

HOST = "127.0.0.1"
AWS_REGION = "ap-south-1"
AWS_KEY = "devstack"  # moto accepts any credentials
# Distinct from every name and URL, so redacting it from the outputs changes nothing else.
AWS_SECRET = "devstack-aws-secret-key"
SLACK_TOKEN = "xoxb-ordertrack-devstack"
CRM_CLIENT_ID = "ordertrack-devstack"
CRM_CLIENT_SECRET = "devstack-client-secret"
CRM_WEBHOOK_SECRET = "devstack-webhook-signing-secret"
SLACK_CHANNELS = {
    "TRACKING_ALERTS_SLACK_CHANNEL": "C0TRACKALERTS",
    "TRACKING_QUERY_SLACK_CHANNEL": "C0TRACKQUERY",
    "LOST_DESTROY_SLACK_CHANNEL_ID": "C0LOSTDESTROY",
    "BOOKING_CANCELED_CHANNEL_ID": "C0BOOKINGCANCEL",
    "DELIVERED_B2B_SLACK_CHANNEL_ID": "C0B2BDELIVERED",
}

_BIN = Path(sys.executable).parent
# The checkout holding `ordertrack_dagster`, so `python -m` finds it from any directory.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A service of the embedded stack failed to start."""


def free_port() -> int:
    """A port the OS has just handed out on the loopback interface."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _script(name: str, *args: str) -> list[str]:
    """A console script of this environment, run by this interpreter (no PATH lookup)."""
    return [sys.executable, str(_BIN / name), *args]


def _module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"ordertrack_dagster.devstack.{name}", *args]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class EmbeddedStack:
    """Starts the selected services (all by default) on entry and stops them on exit.

    Only `services` are started, e.g. `EmbeddedStack(services=("mongodb", "s3"))`, and
    `env` then holds only their variables (plus `ENV`). `simulator_args` are passed to
    the courier simulator's command line (e.g. `["--time-scale", "60"]`). Without a
    `workdir`, logs and the mailbox live in a temporary directory removed on exit.
    `mongodb_storage` keeps SecantusDB's data in that directory instead of in memory, so a
    `restart_service("mongodb")` finds it again (the fault suite stops and restarts it).
    """

    def __init__(
        self,
        services: Iterable[Service] = SERVICES,
        *,
        workdir: Path | None = None,
        db_name: str = "ordertrack",
        bucket: str = "ordertrack-devstack",
        simulator_args: Sequence[str] = (),
        start_timeout: float = 30.0,
        mongodb_storage: Path | None = None,
    ) -> None:
        wanted = set(services)
        if unknown := wanted - set(SERVICES):
            raise ValueError(f"unknown services {sorted(unknown)}; known: {', '.join(SERVICES)}")
        self.services: tuple[Service, ...] = tuple(s for s in SERVICES if s in wanted)
        self.db_name = db_name
        self.bucket = bucket
        self.simulator_args = tuple(simulator_args)
        self.start_timeout = start_timeout
        self.mongodb_storage = str(mongodb_storage) if mongodb_storage else ":memory:"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ordertrack-devstack-")).resolve()
        self.mailbox_dir = self.workdir / "mailbox"
        self.ports: dict[Service, int] = {}
        self.env: dict[str, str] = {}
        self._processes: dict[Service, subprocess.Popen[bytes]] = {}
        self._simulator_admin: SimulatorAdmin | None = None

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every selected service, in parallel, and wait until each answers.

        What an earlier stack left in the same `workdir` (logs, recordings, mail) is cleared.
        """
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        leftovers = [self.log_path(s) for s in SERVICES] + [self._journal(s) for s in SERVICES]
        for leftover in [*leftovers, *self.mailbox_dir.glob("*.eml")]:
            leftover.unlink(missing_ok=True)
        try:
            for service in self.services:
                # The OS may hand out a just-released port twice; each service needs its own.
                while (port := free_port()) in self.ports.values():
                    pass
                self.ports[service] = port
                self._spawn(service)
            for service in self.services:
                self._await_ready(service)
            self.env = self._build_env()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every service (all at once); the temporary work directory goes too."""
        self._stop(list(self._processes))
        if self._simulator_admin is not None:
            self._simulator_admin.close()
            self._simulator_admin = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_service(self, service: Service) -> None:
        """Stop one service (an outage): its port refuses connections until restarted."""
        self._stop([service])

    def _stop(self, services: list[Service]) -> None:
        stop_groups(self._processes.pop(s) for s in services if s in self._processes)

    def start_service(self, service: Service) -> None:
        """Start a stopped service again, on the same port.

        S3 keeps its data in memory, so it comes back empty (the bucket is created again), and
        so does SecantusDB unless the stack has `mongodb_storage`; the Slack and CRM stand-ins
        and the mailbox keep what they received.
        """
        if service in self._processes:
            return
        self._spawn(service)
        self._await_ready(service)

    def restart_service(self, service: Service) -> None:
        self.stop_service(service)
        self.start_service(service)

    def _spawn(self, service: Service) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path(service).open("ab") as log:
            self._processes[service] = spawn_group(
                self._command(service),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _command(self, service: Service) -> list[str]:
        listen = ("--host", HOST, "--port", str(self.ports[service]))
        match service:
            case "mongodb":
                return _script("secantusd-py", *listen, "--storage-path", self.mongodb_storage)
            case "s3":
                return _script("moto_server", "-H", HOST, "-p", str(self.ports[service]))
            case "smtp":
                return _module("mailbox", *listen, "--directory", str(self.mailbox_dir))
            case "slack":
                journal = ("--journal", str(self._journal(service)))
                return _module("stubs", *listen, *journal, "slack", "--token", SLACK_TOKEN)
            case "crm":
                journal = ("--journal", str(self._journal(service)))
                credentials = (
                    *("--client-id", CRM_CLIENT_ID, "--client-secret", CRM_CLIENT_SECRET),
                    *("--webhook-secret", CRM_WEBHOOK_SECRET),
                )
                return _module("stubs", *listen, *journal, "crm", *credentials)
            case "simulator":
                return _module("simulator", *listen, *self.simulator_args)

    def _await_ready(self, service: Service) -> None:
        """Wait until the service answers its protocol; fail with its log if it cannot."""
        process = self._processes[service]
        deadline = time.monotonic() + self.start_timeout
        while not self._answers(service):
            if process.poll() is not None:
                self._fail(service, f"exited with code {process.returncode}")
            if time.monotonic() > deadline:
                self._fail(service, f"did not answer on port {self.ports[service]}")
            time.sleep(0.05)
        if service == "s3":
            self.s3_client().create_bucket(
                Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": AWS_REGION}
            )

    def _answers(self, service: Service) -> bool:
        """A real exchange, not a bare connect: a foreign listener on the port must not pass."""
        try:
            if service == "mongodb":
                with MongoClient(self.url(service), serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
            elif service == "smtp":
                with smtplib.SMTP(HOST, self.ports[service], timeout=1) as smtp:
                    smtp.noop()
            else:
                httpx.get(self.url(service), timeout=1)
        except (OSError, httpx.HTTPError, PyMongoError):
            return False
        return True

    def _fail(self, service: Service, reason: str) -> None:
        command = " ".join(self._command(service))
        log = self.log_path(service)
        raise StackError(
            f"{service} {reason}\ncommand: {command}\n--- end of {log} ---\n{_tail(log)}"
        )

    # -- where things are ------------------------------------------------------------------

    def url(self, service: Service) -> str:
        """The service's base URL (a connection string for MongoDB)."""
        port = self.ports[service]
        if service == "mongodb":
            return f"mongodb://{HOST}:{port}/?directConnection=true"
        return f"http://{HOST}:{port}"

    def pid(self, service: Service) -> int:
        """The process id (and process group id) of a running service."""
        return self._processes[service].pid

    def log_path(self, service: Service) -> Path:
        return self.workdir / "logs" / f"{service}.log"

    def _journal(self, service: Service) -> Path:
        """Where a stand-in keeps what it received, so a restart does not lose it."""
        return self.workdir / f"{service}.jsonl"

    def _build_env(self) -> dict[str, str]:
        env = {"ENV": "DEV"}
        if "mongodb" in self.services:
            env |= {"MONGODB_URI": self.url("mongodb"), "MONGODB_DB": self.db_name}
        if "s3" in self.services:
            env |= {
                "AWS_ENDPOINT_URL": self.url("s3"),
                "AWS_S3_BUCKET": self.bucket,
                "AWS_REGION": AWS_REGION,
                "AWS_ACCESS_KEY_ID": AWS_KEY,
                "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            }
        if "slack" in self.services:
            env |= {"SLACK_TOKEN": SLACK_TOKEN, "SLACK_API_URL": f"{self.url('slack')}/api/"}
            env |= SLACK_CHANNELS
        if "smtp" in self.services:
            env |= {
                "SMTP_HOST": HOST,
                "SMTP_PORT": str(self.ports["smtp"]),
                "SMTP_STARTTLS": "false",
                "EMAIL_SENDER": "tracking@ordertrack.test",
                "EMAIL_PASSWORD": "",
                "EMAIL_RECIPIENTS": "ops@ordertrack.test,logistics@ordertrack.test",
            }
        if "crm" in self.services:
            env |= {
                "CRM_AUTH_URL": f"{self.url('crm')}/oauth/token",
                "CRM_WEBHOOK_URL": f"{self.url('crm')}/webhooks/order-cancel",
                "CRM_CLIENT_ID": CRM_CLIENT_ID,
                "CRM_CLIENT_SECRET": CRM_CLIENT_SECRET,
                "CRM_WEBHOOK_SECRET": CRM_WEBHOOK_SECRET,
            }
        if "simulator" in self.services:
            env |= simulator_env(self.url("simulator"))
        return env

    # -- what the services hold ------------------------------------------------------------

    def s3_client(self) -> Any:
        """A boto3 S3 client for the stack's S3 server."""
        return boto3.client(
            "s3",
            endpoint_url=self.url("s3"),
            region_name=AWS_REGION,
            aws_access_key_id=AWS_KEY,
            aws_secret_access_key=AWS_SECRET,
        )

    @property
    def simulator(self) -> SimulatorAdmin:
        """The courier simulator's admin client (register shipments, faults, clock)."""
        if self._simulator_admin is None:
            self._simulator_admin = SimulatorAdmin(self.url("simulator"))
        return self._simulator_admin

    def mailbox(self) -> list[EmailMessage]:
        """The emails the SMTP server received, oldest first."""
        return read_mailbox(self.mailbox_dir)

    def slack_messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Messages the Slack stand-in accepted (channel, text, blocks, ...), oldest first."""
        messages = self._admin("slack", "GET", "messages")["messages"]
        return [m for m in messages if channel is None or m["channel"] == channel]

    def crm_webhooks(self) -> list[dict[str, Any]]:
        """Webhook calls the CRM accepted: body, idempotency_key, signature, status."""
        return list(self._admin("crm", "GET", "webhooks")["webhooks"])

    def crm_refusals(self) -> list[str]:
        """Why the CRM refused webhook calls (signature checks), oldest first."""
        return list(self._admin("crm", "GET", "webhooks")["refused"])

    def crm_tokens_issued(self) -> int:
        return int(self._admin("crm", "GET", "tokens")["issued"])

    def inject_fault(
        self, service: Literal["slack", "crm"], kind: str, count: int = 1, **options: float
    ) -> None:
        """Make the next `count` messages (Slack) or webhook calls (CRM) fail with `kind`.

        Slack: `500`, `ratelimited` (option `retry_after` seconds), `down`; CRM: `500`,
        `timeout` (option `seconds`, then the call is accepted), `down` (connection dropped).
        """
        self._admin(service, "POST", "faults", {"kind": kind, "count": count, **options})

    def reset_recordings(self) -> None:
        """Forget what the Slack and CRM stand-ins and the mailbox received."""
        for service in ("slack", "crm"):
            if service in self.services:
                self._admin(service, "POST", "reset")
        for message in self.mailbox_dir.glob("*.eml"):
            message.unlink()

    def _admin(
        self, service: Service, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = httpx.request(
            method, f"{self.url(service)}/_admin/{path}", json=body, timeout=10.0
        )
        response.raise_for_status()
        return dict(response.json())
