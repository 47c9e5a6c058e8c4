"""The real Signalbox processes, started against the test database for end-to-end tests:
the web server `make run` uses (uvicorn, orchestrator/servers.py), a Celery worker, the bus
consumer and the scheduler."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from orchestrator import servers
from orchestrator.embedded_redis import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "var" / "test-results"


def database_url_for(name: str) -> str:
    """The configured DATABASE_URL, pointed at database `name` (the test database)."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path=f"/{name}"))


class MailSink:
    """A loopback SMTP server for the stack's workers: accepts any login (recording it, as a
    relay would check it) and every message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.logins: list[tuple[bytes, bytes]] = []
        self.messages: list[bytes] = []
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=free_port(),
            authenticator=self._authenticate,
            auth_require_tls=False,
        )
        self.controller.start()
        self.port = self.controller.port

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=True)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        return "250 OK"

    def stop(self) -> None:
        self.controller.stop()


@dataclass
class Stack:
    env: dict[str, str]
    port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    mail: MailSink | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str, args: list[str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"{self.env['SIGNALBOX_REDIS_PREFIX']}-{name}.log", "w")  # noqa: SIM115
        self.processes[name] = subprocess.Popen(
            args,
            cwd=ROOT,
            env=servers.web_env(self.env) if name == "web" else self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_all(self) -> None:
        python = sys.executable
        bin_dir = Path(python).parent
        # The server `make run` uses, with its web environment (orchestrator/servers.py).
        self.start("web", servers.web_command(python, host="127.0.0.1", port=self.port))
        self.start(
            "worker",
            [
                str(bin_dir / "celery"),
                "-A",
                "orchestrator",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--hostname",
                f"test-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
        )
        self.start("bus", [python, "manage.py", "consume_bus"])
        self.start("scheduler", [python, "manage.py", "scheduler", "--interval", "0.2"])

    def wait_ready(self, timeout: float = 90) -> None:
        def ready():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode}: {self.log_tail(name)}"
                    )
            return httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200

        wait_until(ready, timeout=timeout, interval=0.25, message="the stack to be ready")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = LOGS / f"{self.env['SIGNALBOX_REDIS_PREFIX']}-{name}.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def stop(self, name: str | None = None) -> None:
        names = [name] if name else list(self.processes)
        for each in names:
            process = self.processes[each]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for each in names:
            process = self.processes[each]
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def make_stack(database_name: str) -> Stack:
    env = dict(
        os.environ,
        DATABASE_URL=database_url_for(database_name),
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
    )
    env.pop("SIGNALBOX_TEST_DB_NAME", None)
    # The scheduler declares a silent worker lost after 10 s (10 missed 1 s beats, see
    # tests/env_plugin.py), not 60: a killed worker's attempt is retried within seconds.
    # Only the stack: in-process tests keep the default and move `now` themselves.
    env.setdefault("SIGNALBOX_STEP_HEARTBEAT_TIMEOUT_SECONDS", "10")
    # The stack's workers can run the functions tests register for the `python` step.
    env.setdefault("SIGNALBOX_PYTHON_MODULES", "tests.python_steps")
    # The workers' send_email steps reach a loopback mail server, not whatever is on :25.
    # It outlives stop() (a test may restart every process) and ends with the test process.
    mail = MailSink()
    atexit.register(mail.stop)
    env["EMAIL_HOST"], env["EMAIL_PORT"] = "127.0.0.1", str(mail.port)
    return Stack(env=env, port=free_port(), mail=mail)
