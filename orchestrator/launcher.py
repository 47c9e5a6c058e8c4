"""`make run`: prepare the database and start every Signalbox process in the foreground.

Each process's output is prefixed with its name. SIGINT or SIGTERM stops them all; if one
dies the others are stopped too. Children get SIGTERM if the launcher itself is killed, so
nothing is left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator import embedded_redis

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SIGNALBOX_VAR_DIR", BASE_DIR / "var"))
PR_SET_PDEATHSIG = 1
COLOURS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent exits (no orphans)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _child_setup() -> None:
    os.setsid()  # own process group: we stop a child with everything it forked
    die_with_parent()


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.width = 10
        self.colour = sys.stdout.isatty()

    def say(self, name: str, line: str) -> None:
        index = [n for n, _ in self.children].index(name) if name in dict(self.children) else 0
        prefix = f"{name:<{self.width}}|"
        if self.colour:
            prefix = f"{COLOURS[index % len(COLOURS)]}{prefix}{RESET}"
        with self.lock:
            sys.stdout.write(f"{prefix} {line}\n")
            sys.stdout.flush()

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            args, env=env, cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_child_setup, text=True, bufsize=1,
        )
        self.children.append((name, process))
        threading.Thread(target=self._pump, args=(name, process), daemon=True).start()
        return process

    def _pump(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.say(name, line.rstrip("\n"))

    def stop_all(self, grace: float = 10.0) -> None:
        self.stopping.set()
        for _name, process in reversed(self.children):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for name, process in reversed(self.children):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("launcher", f"{name} did not stop in time; killing it")
            try:
                os.killpg(process.pid, signal.SIGKILL)  # anything left in its group
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()


def run_step(sup: Supervisor, name: str, args: list[str], env: dict[str, str]) -> None:
    process = sup.start(name, args, env)
    if process.wait() != 0:
        raise SystemExit(f"{name} failed with exit code {process.returncode}")


def main() -> int:
    die_with_parent()
    sup = Supervisor()
    env = dict(os.environ, PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="orchestrator.settings")
    python = sys.executable
    bin_dir = Path(python).parent
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")

    def on_signal(signum, _frame):
        if not sup.stopping.is_set():
            sup.say("launcher", f"{signal.Signals(signum).name}: stopping every process")
            sup.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        if not env.get("REDIS_URL"):
            process, url = embedded_redis.start(
                VAR_DIR / "redis", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                preexec_fn=_child_setup, text=True,
            )
            sup.children.append(("redis", process))
            threading.Thread(target=sup._pump, args=("redis", process), daemon=True).start()
            env["REDIS_URL"] = url
            sup.say("launcher", f"started an embedded Redis at {url} (files in var/redis)")
        if not env.get("DATABASE_URL"):
            sup.say("launcher", "using the embedded SQLite database var/signalbox.sqlite3")
        run_step(sup, "migrate", [python, "manage.py", "migrate", "--noinput"], env)
        run_step(sup, "bootstrap", [python, "manage.py", "bootstrap"], env)

        sup.start("web", [str(bin_dir / "daphne"), "-b", host, "-p", port,
                          "--proxy-headers", "orchestrator.asgi:application"], env)
        sup.start("worker", [str(bin_dir / "celery"), "-A", "orchestrator", "worker",
                             "--loglevel", "INFO", "--concurrency",
                             os.environ.get("SIGNALBOX_WORKER_CONCURRENCY", "2"),
                             "--hostname", f"worker-{os.getpid()}@%h"], env)
        sup.start("scheduler", [python, "manage.py", "scheduler"], env)
        sup.start("bus", [python, "manage.py", "consume_bus"], env)
        sup.say("launcher", f"Signalbox is up: http://{host}:{port}/  (Ctrl-C stops everything)")

        while not sup.stopping.is_set():
            for name, process in sup.children:
                if process.poll() is not None and name not in ("migrate", "bootstrap"):
                    sup.say("launcher", f"{name} exited with code {process.returncode}")
                    sup.stopping.set()
                    break
            sup.stopping.wait(0.5)
    except SystemExit as exc:
        sup.say("launcher", str(exc))
        sup.stop_all()
        return 1
    except embedded_redis.RedisUnavailable as exc:
        sup.say("launcher", f"cannot start Redis: {exc}")
        sup.stop_all()
        return 1
    sup.stop_all()
    sup.say("launcher", "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
