"""What the expression limits cost per evaluation, beside cel-python unbounded in the same run.

    .venv/bin/python -m bench.expressions            # ≈20 s
    .venv/bin/python -m bench.expressions --quick    # ≈5 s

Ours: `workflows.core.expressions.evaluate` (CPU-time budget checked at every node, size checks
on `+`, CEL-spec operators, lazy conversion of the context, counted conversion of the
result). Baseline: cel-python's own `InterpretedRunner` and `json_to_cel` on the same
expression and context, with no limit at all. Both with the context converted for each
evaluation (a step's template) and converted once (`bound`, the trigger filters of one
event). The best of several repeats of process CPU time is kept: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import timeit

import django

CONTEXT = {
    "event": {
        "type": "com.example.order.placed",
        "data": {
            "order": 42,
            "total": 19.5,
            "customer": {"name": "Ann", "vip": True},
            "lines": [{"sku": str(i), "qty": i} for i in range(20)],
        },
    },
    "vars": {"threshold": 40},
}
CASES = {
    "filter": "event.data.total > 10.0 && event.data.customer.vip",
    "template": "event.data.customer.name + ' #' + string(event.data.order)",
    "map of 20": "event.data.lines.map(l, l.qty * 2).size()",
}


def best(function, number: int, repeat: int) -> float:
    # CPU time of this process: waiting for a core on a shared machine is not counted.
    timer = time.process_time
    return min(timeit.repeat(function, number=number, repeat=repeat, timer=timer)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    django.setup()
    import celpy
    from celpy import json_to_cel

    from workflows.core.expressions import bind, evaluate

    env = celpy.Environment()
    repeat = 3 if args.quick else 7
    print(f"{'case':<12}{'context':<10}{'ours µs':>10}{'cel-python µs':>15}{'overhead':>10}")
    for name, expression in CASES.items():
        number = 30 if "map" in name else 300
        number //= 3 if args.quick else 1
        baseline = env.program(env.compile(expression))
        bound_ours = bind(CONTEXT)
        bound_base = {k: celpy.json_to_cel(v) for k, v in CONTEXT.items()}
        assert evaluate(expression, CONTEXT) is not None
        rows = [
            (
                "each",
                lambda e=expression: evaluate(e, CONTEXT),
                lambda b=baseline: b.evaluate({k: json_to_cel(v) for k, v in CONTEXT.items()}),
            ),
            (
                "bound",
                lambda e=expression, o=bound_ours: evaluate(e, CONTEXT, bound=o),
                lambda b=baseline, c=bound_base: b.evaluate(dict(c)),
            ),
        ]
        for context, ours, theirs in rows:
            mine, base = best(ours, number, repeat), best(theirs, number, repeat)
            print(
                f"{name:<12}{context:<10}{mine * 1e6:>10.0f}{base * 1e6:>15.0f}"
                f"{(mine / base - 1) * 100:>+9.0f}%"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
