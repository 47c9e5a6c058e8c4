"""py-spy samples of the web processes during bench.ingest's single-event phase, summarised
as the functions seen in most samples."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.stack import OUT


class Profile:
    """py-spy (when installed) sampling the web processes during the single-event phase:
    where the hot path's time goes, summarised as the functions seen in most samples."""

    TOP = 15
    summary: list[tuple[float, float, str]] = []

    def __init__(self, process: subprocess.Popen, out: Path):
        self.process, self.out = process, out

    @classmethod
    def start(cls, stack, seconds: float) -> Profile | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        web = stack.processes.get("web")
        if not Path(spy).exists() or web is None:
            return None
        out = OUT / f"{stack.tag}-ingest-profile.txt"
        process = subprocess.Popen(
            [spy, "record", "--pid", str(web.pid), "--subprocesses", "--nonblocking",
             "--duration", str(max(1, round(seconds) - 1)), "--format", "raw",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return cls(process, out)

    def finish(self) -> None:
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return
        if self.out.exists():
            Profile.summary = summarise_profile(self.out.read_text(), self.TOP)


def summarise_profile(raw: str, top: int) -> list[tuple[float, float, str]]:
    """(share of samples in which the function is on the stack, share at the top, name)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")").split(":")[0]
            for f in stack.split(";")
        ]
        # py-spy's "process N: command line" roots and the worker start-up frames.
        frames = [f for f in frames if not f.startswith("process ") and "spawn_main" not in f]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return []
    # The frames every sample of a thread starts with (thread start, server start-up).
    boring = ("_bootstrap", "Thread.run", "<module>", "Runner.run", "run_forever", "_run_once",
              "core.py", "main.py", "_compat.py", "server.py", "Handle._run", "spawn.py",
              "process.py", "multiprocess.py", "_subprocess.py")  # fmt: skip
    ranked = sorted(
        ((count, name) for name, count in inclusive.items() if not any(b in name for b in boring)),
        reverse=True,
    )[:top]
    return [(count / total, own.get(name, 0) / total, name) for count, name in ranked]
