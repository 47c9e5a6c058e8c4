"""`make test`: find or start the services, then run the suite in pytest processes, three
lanes side by side.

Browser tests run in their own process (pytest-playwright's event loop breaks
pytest-asyncio tests that run after it in the same process), and so does the fault suite
(tests/test_chaos.py: its own servers and processes, mostly waiting on them). Every other
test file is dealt to the three lanes by its recorded time (tests/durations.json; refresh it
with `make test ARGS=--record-durations`), so the lanes end about together. Each part's
output is printed when it ends, and each part gets its own PostgreSQL database and its own
Redis key prefix, so it never meets another run's data or a developer's `make run`."""

from __future__ import annotations

import argparse
import json
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

# The browser tests and the fault suite are parts of their own; every other test file is
# dealt to the lanes by its recorded time (tests/durations.json, longest first, each to the
# lane with the least so far), so the lanes end about together: the tests wait on real
# processes more than they use the CPU (a lane keeps about half a core busy), so three lanes
# end sooner than two on these 2 cores.
LANE_COUNT = 3
FIXED = {
    "browser": ["-m", "browser", "-p", "no:randomly"],
    "chaos": ["-m", "chaos", "-p", "no:randomly"],
}
# Files all of whose tests are marked chaos (the browser tests are the folder tests/browser).
FIXED_FILES = {"tests/test_chaos.py", "tests/test_multi_host.py"}
# Files that share a costly session fixture stay together, in a pytest process of their own
# within the lane they are dealt to: the million-row tables (tests/million_runs.py) are built
# once per process, and their EXPLAIN checks once met a process whose earlier tests left the
# events table without its secondary indexes (a fresh clone's make test, not reproduced).
TOGETHER = {"million": ("tests/test_keyset_explain.py", "tests/test_pages_explain.py")}
DURATIONS = ROOT / "tests" / "durations.json"
UNKNOWN_SECONDS = 10.0  # a file not yet timed (new since the file was written)
REST = ["-m", "not browser and not chaos"]


def rest_files() -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").glob("test_*.py")
        if str(path.relative_to(ROOT)) not in FIXED_FILES
    )


def recorded() -> dict[str, float]:
    try:
        return json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}


def deal(files: list[str], seconds: dict[str, float], lanes: int) -> list[list[str]]:
    """The files in `lanes` groups of about equal recorded time, after the fixed parts
    (browser, chaos) each take a lane of their own: longest first, each to the lightest."""
    units: list[tuple[str, ...]] = []
    grouped = {name for group in TOGETHER.values() for name in group}
    units += [tuple(f for f in group if f in files) for group in TOGETHER.values()]
    units += [(f,) for f in files if f not in grouped]
    units = [unit for unit in units if unit]
    cost = lambda unit: sum(seconds.get(f, UNKNOWN_SECONDS) for f in unit)  # noqa: E731
    loads = [seconds.get(f"part:{part}", 0.0) for part in FIXED][:lanes]
    loads += [0.0] * (lanes - len(loads))
    dealt: list[list[str]] = [[] for _ in range(lanes)]
    for unit in sorted(units, key=cost, reverse=True):
        lightest = loads.index(min(loads))
        dealt[lightest] += unit
        loads[lightest] += cost(unit)
    return dealt


def plan(only: str | None) -> tuple[list[list[str]], dict[str, list[str]]]:
    """The lanes (each a list of part names, run one after another) and each part's
    pytest arguments."""
    fixed = list(FIXED)
    parts, lanes = dict(FIXED), []
    for i, files in enumerate(deal(rest_files(), recorded(), LANE_COUNT)):
        lane = fixed[i : i + 1]
        apart = {name: [f for f in group if f in files] for name, group in TOGETHER.items()}
        rest = [f for f in files if not any(f in group for group in apart.values())]
        if rest:
            parts[f"rest-{i + 1}"] = [*REST, *rest]
            lane.append(f"rest-{i + 1}")
        for name, group in apart.items():
            if group:
                parts[name] = [*REST, *group]
                lane.append(name)
        lanes.append(lane)
    if only == "rest":
        return [[name] for name in parts if name not in FIXED], parts
    if only:
        return [[only]], parts
    return lanes, parts


def timings(junits: list[Path]) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown) from a run's JUnit reports."""
    found: dict[str, float] = {}
    for junit in junits:
        try:
            root = ET.parse(junit).getroot()
        except (OSError, ET.ParseError):
            continue
        for case in root.iter("testcase"):
            module = case.get("classname", "").split(".")
            while module and not (ROOT / Path(*module).with_suffix(".py")).is_file():
                module.pop()  # drop the class names after the module
            if module:
                name = str(Path(*module).with_suffix(".py"))
                found[name] = found.get(name, 0.0) + float(case.get("time") or 0)
    return found


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
    # Started in the background by a non-interactive shell (`make test &`), we inherit SIGINT
    # ignored and every test process would too (a test sending SIGINT to `make run` saw it
    # ignored); Ctrl-C stops us as usual either way.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["rest", *FIXED])
    parser.add_argument(
        "--record-durations",
        action="store_true",
        help=f"after the run, write each file's time to {DURATIONS.relative_to(ROOT)}",
    )
    args, pytest_args = parser.parse_known_args()
    lanes, commands = plan(args.only)
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
        command = [sys.executable, "-m", "pytest", *commands[part], f"--junitxml={junit}"]
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
    if args.record_durations:
        seconds = timings([junit for _code, junit in outcomes.values()])
        seconds |= {f"part:{part}": took[part] for part in FIXED if part in took}
        merged = dict(sorted((recorded() | seconds).items()))
        DURATIONS.write_text(json.dumps(merged, indent=1) + "\n")
        print(f"wrote {len(seconds)} times to {DURATIONS.relative_to(ROOT)}", flush=True)
    print(f"\n{passed} passed, {failed} failed, {totals['skipped']} skipped", flush=True)
    return 1 if failed or totals["tests"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
