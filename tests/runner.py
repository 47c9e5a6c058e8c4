"""`make test`: find or start the services, then run the suite in two pytest processes.

Browser tests run in their own process (pytest-playwright's event loop breaks
pytest-asyncio tests that run after it in the same process). Each test run gets its own
PostgreSQL database and its own Redis key prefix, so it never meets another run's data or
a developer's `make run`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.services import MissingService, ensure_all

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "var" / "test-results"

PARTS = {
    "fast": ["-m", "not browser"],
    "browser": ["-m", "browser", "-p", "no:randomly"],
}


def counts(junit: Path) -> dict[str, int]:
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if not junit.exists():
        return totals
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    for suite in suites:
        for name in totals:
            totals[name] += int(suite.get(name, 0))
    return totals


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(PARTS))
    args, pytest_args = parser.parse_known_args()
    parts = [args.only] if args.only else list(PARTS)

    try:
        services = ensure_all(browser="browser" in parts)
    except MissingService as exc:
        print(f"make test cannot start: {exc}", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    exit_codes = []
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    try:
        for part in parts:
            junit = RESULTS / f"{part}.xml"
            junit.unlink(missing_ok=True)
            env = dict(
                os.environ,
                DATABASE_URL=services.database_url,
                REDIS_URL=services.redis_url,
                SIGNALBOX_TEST_DB_NAME=f"test_signalbox_{run_id}_{part}",
                SIGNALBOX_REDIS_PREFIX=f"sbxtest-{run_id}-{part}",
            )
            print(f"\n=== {part} tests (database test_signalbox_{run_id}_{part}) ===", flush=True)
            code = subprocess.call(
                [sys.executable, "-m", "pytest", *PARTS[part], f"--junitxml={junit}",
                 *pytest_args],
                cwd=ROOT,
                env=env,
            )
            exit_codes.append(code)
            for name, value in counts(junit).items():
                totals[name] += value
    finally:
        services.close()

    failed = totals["failures"] + totals["errors"]
    passed = totals["tests"] - failed - totals["skipped"]
    print(f"\n{passed} passed, {failed} failed, {totals['skipped']} skipped")
    if any(code not in (0,) for code in exit_codes) or totals["tests"] == 0:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
