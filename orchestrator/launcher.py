"""`make run`: prepare the database and start every Signalbox process in the foreground.

Each process's output is prefixed with its name. SIGINT, SIGTERM or SIGHUP stops them all;
if one dies the others are stopped too. Nothing is left behind:

- every child runs in its own process group (it gets no terminal Ctrl-C of its own; we stop
  it, and whatever it forked, with a signal to the group, in a set order);
- every child gets SIGTERM from Linux if the launcher dies (PR_SET_PDEATHSIG), and so does
  the launcher if `make` dies;
- GNU make forwards SIGTERM to us, but when SIGINT is sent to make's pid alone (not by a
  terminal, which signals us too) make blocks it and waits for us forever. We notice that
  (make's blocked-signal mask, read from /proc) and stop as if we had been sent it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator import embedded_redis, servers

BASE_DIR = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
COLOURS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Signals whose delivery makes GNU make wait for its children with the signal blocked.
MAKE_FATAL_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def var_dir() -> Path:
    return Path(os.environ.get("SIGNALBOX_VAR_DIR", BASE_DIR / "var"))


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent exits (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_setup() -> None:
    os.setsid()  # own process group: we stop a child with everything it forked
    die_with_parent()


def parent_is_being_stopped(ppid: int) -> bool:
    """True when our parent is GNU make handling a fatal signal (and so waiting for us).

    make runs its handler with the signal blocked, reaps its children, then re-raises.
    Outside that handler make only blocks these signals for an instant around a fork.
    """
    try:
        if Path(f"/proc/{ppid}/comm").read_text().strip() not in {"make", "gmake"}:
            return False
        status = Path(f"/proc/{ppid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            blocked = int(line.split()[1], 16)
            return any(blocked & (1 << (sig - 1)) for sig in MAKE_FATAL_SIGNALS)
    return False


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.pumps: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.reason = ""
        self.lock = threading.Lock()
        self.width = 10
        self.colour = sys.stdout.isatty()
        self.names: list[str] = []

    def say(self, name: str, line: str) -> None:
        with self.lock:
            if name not in self.names:
                self.names.append(name)
            prefix = f"{name:<{self.width}}|"
            if self.colour:
                prefix = f"{COLOURS[self.names.index(name) % len(COLOURS)]}{prefix}{RESET}"
            try:
                sys.stdout.write(f"{prefix} {line}\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass  # nobody is reading our output any more; keep supervising

    def stop(self, reason: str) -> None:
        """Ask for everything to stop. No output here: a signal handler calls this, and
        writing to stdout from inside an interrupted write raises."""
        if not self.stopping.is_set():
            self.reason = reason
            self.stopping.set()

    def adopt(self, name: str, process: subprocess.Popen) -> subprocess.Popen:
        self.children.append((name, process))
        pump = threading.Thread(target=self._pump, args=(name, process), daemon=True)
        pump.start()
        self.pumps.append(pump)
        return process

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            args,
            env=env,
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_child_setup,
            text=True,
            bufsize=1,
            errors="replace",
        )
        return self.adopt(name, process)

    def _pump(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.say(name, line.rstrip("\n"))

    def watch_parent(self) -> None:
        """Stop when make is being stopped without telling us, or when our parent is gone."""
        ppid = os.getppid()
        seen = 0
        while not self.stopping.wait(0.25):
            if os.getppid() != ppid:
                self.stop("the parent process exited")
            elif parent_is_being_stopped(ppid):
                seen += 1
                if seen >= 2:  # twice in a row: not make's instant around a fork
                    self.stop("make was interrupted")
            else:
                seen = 0

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM the application processes, then Redis last (they talk to it on the way out);
        SIGKILL whatever is left of a process group after the grace period."""
        self.stopping.set()
        if self.reason:
            self.say("launcher", f"{self.reason}: stopping every process")
        apps = [(n, p) for n, p in self.children if n != "redis"]
        stores = [(n, p) for n, p in self.children if n == "redis"]
        for group in (apps, stores):
            for _name, process in group:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for name, process in group:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say("launcher", f"{name} did not stop within {grace:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # anything left in its group
                process.wait()
        for pump in self.pumps:
            pump.join(2)  # let the last lines through


def web_answers(host: str, port: str) -> bool:
    """True once the web process answers /healthz (on loopback when bound to every address)."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(f"http://{host}:{port}/healthz", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (a 400 for a host outside DJANGO_ALLOWED_HOSTS, say)
    except (OSError, ValueError):
        return False


def worker_queue_args(env) -> list[str]:
    queues = ",".join(
        q.strip() for q in env.get("SIGNALBOX_WORKER_QUEUES", "").split(",") if q.strip()
    )
    return ["--queues", queues] if queues else []


def run_step(sup: Supervisor, name: str, args: list[str], env: dict[str, str]) -> bool:
    """Run one preparation command to the end; False if we were told to stop meanwhile."""
    process = sup.start(name, args, env)
    while True:
        try:
            process.wait(0.1)  # returns as soon as it exits, not at the next tick
            break
        except subprocess.TimeoutExpired:
            if sup.stopping.is_set():
                # Migrations run one transaction each, so stopping half-way is safe to redo.
                return False
    if process.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {process.returncode}")
    return True


def main() -> int:
    die_with_parent()
    sup = Supervisor()

    def on_signal(signum, _frame):
        sup.stop(signal.Signals(signum).name)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    threading.Thread(target=sup.watch_parent, daemon=True).start()

    env = dict(os.environ, PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="orchestrator.settings")
    python = sys.executable
    bin_dir = Path(python).parent
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    here = var_dir()
    failed = False

    try:
        if not env.get("REDIS_URL"):
            redis_dir = here / "redis"
            process, url = embedded_redis.start(
                redis_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup,
                text=True,
                errors="replace",
            )
            sup.adopt("redis", process)
            env["REDIS_URL"] = url
            binary = process.args[0]
            sup.say(
                "launcher", f"started an embedded Redis at {url} ({binary}, files in {redis_dir})"
            )
        if not env.get("DATABASE_URL"):
            sup.say("launcher", f"using the embedded SQLite database {here / 'signalbox.sqlite3'}")
        prepared = (
            not sup.stopping.is_set()
            # Django's system checks import every URL and view (a few seconds of start-up on
            # two busy cores): they run once, in bootstrap, which imports most of it anyway.
            and run_step(
                sup, "migrate", [python, "manage.py", "migrate", "--noinput", "--skip-checks"], env
            )
            and not sup.stopping.is_set()
            and run_step(sup, "bootstrap", [python, "manage.py", "bootstrap"], env)
            and not sup.stopping.is_set()
        )
        if prepared:
            services = {
                "web": servers.web_command(python, host=host, port=port, env=env),
                "worker": [
                    str(bin_dir / "celery"),
                    "-A",
                    "orchestrator",
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--concurrency",
                    os.environ.get("SIGNALBOX_WORKER_CONCURRENCY", "2"),
                    "--hostname",
                    f"worker-{os.getpid()}@%h",
                    # Nothing here uses them, and mingle alone costs a second at every start.
                    "--without-mingle",
                    "--without-gossip",
                    # Without -Q a worker consumes every declared queue (the default one and
                    # each step queue, settings.CELERY_TASK_QUEUES); SIGNALBOX_WORKER_QUEUES
                    # narrows it, e.g. to run a second, IO-only launcher elsewhere.
                    *worker_queue_args(os.environ),
                ],
                "scheduler": [python, "manage.py", "scheduler"],
                # One or more consumers: they share the bus partitions by leases.
                **{name: [python, "manage.py", "consume_bus"] for name in servers.bus_names(env)},
            }
            for name, args in services.items():
                sup.start(name, args, servers.web_env(env) if name == "web" else env)
            announced = False
            # Look for the web process often until it answers (the user is waiting for the
            # "up" line), then every half second is enough to notice a child exiting.
            while not sup.stopping.wait(0.5 if announced else 0.1):
                if not announced and web_answers(host, port):
                    announced = True
                    sup.say(
                        "launcher",
                        f"Signalbox is up: http://{host}:{port}/  (Ctrl-C stops everything)",
                    )
                for name, process in sup.children:
                    if (name in services or name == "redis") and process.poll() is not None:
                        failed = True
                        sup.stop(f"{name} exited with code {process.returncode}")
                        break
        else:
            sup.say("launcher", "stopped before the servers were started")
    except SystemExit as exc:
        sup.say("launcher", str(exc))
        failed = True
    except embedded_redis.RedisUnavailable as exc:
        sup.say("launcher", f"cannot start Redis: {exc}")
        failed = True
    finally:
        sup.stop_all()
    sup.say("launcher", "stopped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
