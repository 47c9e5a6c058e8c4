"""`make chaos`: every fault scenario at full size, one after another on one stack; prints
each scenario's faults and findings and writes them to var/chaos/latest.json.

    python -m tests.chaos [--bounded] [--only NAME ...] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time

import django


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bounded", action="store_true", help="the sizes `make test` uses")
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    django.setup()
    from tests.chaos.harness import LOGS, ChaosStack
    from tests.chaos.scenarios import BOUNDED, FULL, SCENARIOS, as_json, describe

    size = BOUNDED if args.bounded else FULL
    names = args.only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    # A `kill` must still stop the processes and remove the servers' files (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    print(f"seed {args.seed}; size {size}", flush=True)
    stack = ChaosStack().start()
    results = []
    try:
        for name in names:
            started = time.monotonic()
            result = SCENARIOS[name](stack, size, rng)
            results.append(result)
            line = describe(result)
            print(f"{'ok  ' if line['ok'] else 'FAIL'} {name} ({time.monotonic() - started:.0f} s)"
                  f": faults {line['faults']}\n     {line['summary']}", flush=True)  # fmt: skip
            for what, figures in line["figures"].items():
                print(f"     {what}: {figures}", flush=True)
            for note in line["notes"]:
                print(f"     note: {note}", flush=True)
    finally:
        stack.stop()
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "latest.json").write_text(as_json(results))
    failed = [r for r in results if not (r.outcome and r.outcome.ok)]
    print(f"{len(results) - len(failed)} of {len(results)} scenarios held; "
          f"written {LOGS / 'latest.json'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
