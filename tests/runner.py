"""`make test`: find or start the services, then run the suite in six pytest processes.

Browser tests run in their own process (pytest-playwright's event loop breaks
pytest-asyncio tests that run after it in the same process), and so does the fault suite
(tests/test_chaos.py: its own servers and processes, mostly waiting on them), and the
slowest other files (SLOW_FILES); the rest is cut by file into three shards. Three lanes
run side by side (LANES), each part's output printed when it ends. Each part gets its own
PostgreSQL database and its own Redis key prefix, so it never meets another run's data or a
developer's `make run`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.services import MissingService, ensure_all

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "var" / "test-results"

# The slowest files of the rest (real stacks, EXPLAIN over a big table, schemathesis, the
# brokers) run as a part of their own.
SLOW_FILES = [
    "tests/test_keyset_explain.py",
    "tests/test_pages_explain.py",
    "tests/test_launcher.py",
    "tests/test_openapi.py",
    "tests/test_connections.py",
    "tests/test_connector_contract.py",
    "tests/test_connector_sinks.py",
    "tests/test_emit_event_targets.py",
    "tests/test_kafka_bus_source.py",
]
# The rest is cut by file into FAST_SHARDS parts run side by side: the tests wait on real
# processes more than they use the CPU (a lane keeps about half a core busy), so three lanes
# end sooner than two on these 2 cores.
FAST_SHARDS = 3
FAST = ["-m", "not browser and not chaos", *(f"--ignore={f}" for f in SLOW_FILES)]
PARTS = {
    **{f"fast-{i}": [*FAST, f"--shard={i}/{FAST_SHARDS}"] for i in range(1, FAST_SHARDS + 1)},
    "slow": ["-m", "not browser and not chaos", *SLOW_FILES],
    "browser": ["-m", "browser", "-p", "no:randomly"],
    "chaos": ["-m", "chaos", "-p", "no:randomly"],
}
# Each lane runs its parts one after another; the lanes run at once, about even in length.
LANES = [["fast-1", "chaos"], ["fast-2", "browser"], ["fast-3", "slow"]]
# `--only`: one part, or every fast shard (each in a lane of its own).
ONLY = {"fast": [[f"fast-{i}"] for i in range(1, FAST_SHARDS + 1)]} | {
    part: [[part]] for part in ("slow", "browser", "chaos")
}


def counts(junit: Path) -> dict[str, int]:
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if not junit.exists():
        return totals
    try:
        root = ET.parse(junit).getroot()
    except ET.ParseError:  # cut short by a crash: the exit code tells the rest
        return totals
    suites = [root] if root.tag == "testsuite" else list(root)
    for suite in suites:
        for name in totals:
            totals[name] += int(suite.get(name, 0))
    return totals


def failures(junit: Path) -> list[str]:
    """One line per failed or errored test: its id and the first line of why, so the
    summary at the very end (all a CI log's tail may show) names what broke."""
    if not junit.exists():
        return []
    try:
        root = ET.parse(junit).getroot()
    except ET.ParseError:
        return []
    lines = []
    for case in root.iter("testcase"):
        for outcome in ("failure", "error"):
            found = case.find(outcome)
            if found is None:
                continue
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            why = (found.get("message") or "").strip().splitlines()
            lines.append(f"{outcome.upper()} {name}: {why[0][:300] if why else ''}")
    return lines


def stop_on_sigterm() -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the throwaway servers we
    started are stopped on the way out."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(ONLY))
    args, pytest_args = parser.parse_known_args()
    lanes = ONLY[args.only] if args.only else LANES
    parts = [part for lane in lanes for part in lane]
    stop_on_sigterm()

    try:
        services = ensure_all(browser="browser" in parts)
    except MissingService as exc:
        print(f"make test cannot start: {exc}", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    outcomes: dict[str, tuple[int, Path]] = {}
    took: dict[str, float] = {}  # seconds per part: which lane holds the 15-minute budget
    children: list[subprocess.Popen] = []
    printing = threading.Lock()

    def run_part(part: str, stream: bool) -> None:
        # Named per run: other checkouts' runs may write beside ours.
        junit = RESULTS / f"{part}-{run_id}.xml"
        log = RESULTS / f"{part}-{run_id}.log"
        env = dict(
            os.environ,
            DATABASE_URL=services.database_url,
            REDIS_URL=services.redis_url,
            SIGNALBOX_TEST_DB_NAME=f"test_signalbox_{run_id}_{part}",
            SIGNALBOX_REDIS_PREFIX=f"sbxtest-{run_id}-{part}",
        )
        header = f"\n=== {part} tests (database test_signalbox_{run_id}_{part}) ==="
        command = [sys.executable, "-m", "pytest", *PARTS[part], f"--junitxml={junit}"]
        started = time.monotonic()
        with open(log, "w") as out:
            if stream:
                print(header, flush=True)
            child = subprocess.Popen(
                [*command, *pytest_args],
                cwd=ROOT,
                env=env,
                stdout=None if stream else out,
                stderr=None if stream else subprocess.STDOUT,
            )
            children.append(child)
            code = child.wait()
        took[part] = time.monotonic() - started
        if not stream:
            with printing:
                print(header, flush=True)
                print(log.read_text(errors="replace"), end="", flush=True)
        outcomes[part] = (code, junit)

    def run_lane(parts: list[str]) -> None:
        for part in parts:
            run_part(part, stream=len(lanes) == 1)

    try:
        threads = [threading.Thread(target=run_lane, args=(lane,)) for lane in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        services.close()

    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    broken: list[str] = []
    failed_tests: list[str] = []
    for part, (code, junit) in outcomes.items():
        found = counts(junit)
        failed_tests += failures(junit)
        for name, value in found.items():
            totals[name] += value
        # 0: all passed; 5: nothing selected in this part (fine if another part ran).
        # Anything else without a failed test to show for it (an internal error, a crash,
        # an interrupted run) still fails the run, and counts as one failure.
        if code not in (0, 5) and not (found["failures"] or found["errors"]):
            broken.append(f"{part} tests: pytest exited with code {code}")

    failed = totals["failures"] + totals["errors"] + len(broken)
    passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    for line in failed_tests:
        print(line, flush=True)
    for reason in broken:
        print(f"\n{reason}", flush=True)
    if totals["tests"] == 0:
        print("\nno test ran", flush=True)
    for lane in lanes:
        timed = [f"{part} {took[part]:.0f} s" for part in lane if part in took]
        print(f"lane: {', '.join(timed)}", flush=True)
    print(f"\n{passed} passed, {failed} failed, {totals['skipped']} skipped", flush=True)
    return 1 if failed or totals["tests"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
