"""`make bench`: every benchmark, one after another, each beside the baselines it measures
in the same run; then the results section of docs/benchmarks.md is rewritten with what
they printed, the machine, the versions and the load average.

    python -m bench.all            # about 25 minutes on 2 cores
    python -m bench.all --quick    # a smoke run of each (about 8 minutes)
    python -m bench.all ingest     # some of them

Benchmarks never run in `make test`.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
BENCHMARKS = {
    "ingest": "events accepted per second, beside a bare durable Django view",
    "engine": "runs and steps, beside bare Celery",
    "push": "from a run's commit to the frame on open pages",
    "growth": "10,000 workflows and a million runs",
}
# Progress and bookkeeping lines, left out of the document.
NOISE = re.compile(r"(\.\.\.\s*$|^machine: |^written to |^starting |^\s*$)")


def run(name: str, extra: list[str]) -> tuple[int, str]:
    print(f"\n=== bench.{name} {' '.join(extra)}", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", f"bench.{name}", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    return process.wait(), "\n".join(lines)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    packages = ", ".join(
        f"{p} {version(p)}" for p in ("Django", "uvicorn", "celery", "channels", "redis", "psycopg")
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python "
        f"{platform.python_version()}; {packages}; commit {commit}"
    )


def section(results: dict[str, tuple[int, str]], started: datetime, loads: tuple) -> str:
    out = [
        BEGIN,
        f"### Latest `make bench` ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}. Load average {loads[0]:.1f} at the start, "
        f"{loads[1]:.1f} at the end.",
        "",
    ]
    for name, (status, output) in results.items():
        kept = [line for line in output.splitlines() if not NOISE.search(line)]
        out += [f"#### bench.{name}: {BENCHMARKS[name]}", ""]
        if status:
            out += [f"(exited with status {status}; the last lines it printed)", ""]
            kept = kept[-20:]
        out += ["```", *kept, "```", ""]
    out.append(END)
    return "\n".join(out)


def rewrite(doc: Path, block: str) -> None:
    text = doc.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Results of the last full run\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", choices=[*BENCHMARKS, []], help="which (default all)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of each")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    results = {}
    for name in args.only or BENCHMARKS:
        results[name] = run(name, ["--quick"] if args.quick else [])
    loads = (load_before, os.getloadavg()[0])
    if not args.no_doc:
        rewrite(DOC, section(results, started, loads))
        print(f"\nresults written to {DOC.relative_to(ROOT)}")
    return max(status for status, _ in results.values())


if __name__ == "__main__":
    sys.exit(main())
