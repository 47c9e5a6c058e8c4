"""`for_each`: run an action for every item of a list, a few at a time, and join the results.

Each item runs the inner step kind with `item` and `index` in its expression context and its
own idempotency key (the step's key + index), so a retried loop does not repeat effects on
receivers that deduplicate.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ..expressions import evaluate, render_value
from .base import StepContext, StepError, StepKind, StepResult
from .registry import all_kinds, register

MAX_ITEMS = 10_000


@register
class ForEach(StepKind):
    name = "for_each"
    title = "For each"
    description = "Run an action for every item of a list (bounded concurrency), join results."
    icon = "repeat"
    group = "flow"
    expression_fields = ("items",)
    raw_fields = ("do",)
    config_schema = {
        "type": "object",
        "required": ["items", "do"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "string", "minLength": 1, "description": "CEL giving a list"},
            "concurrency": {"type": "integer", "minimum": 1, "maximum": 32, "default": 4},
            "do": {
                "type": "object",
                "required": ["kind"],
                "additionalProperties": False,
                "properties": {"kind": {"type": "string"}, "config": {"type": "object"}},
            },
        },
    }

    def execute(self, config, ctx: StepContext):
        items = evaluate(config["items"], ctx.expression_context(), where=f"step {ctx.step_id}")
        if not isinstance(items, list):
            raise StepError(f"items must evaluate to a list, got {type(items).__name__}")
        if len(items) > MAX_ITEMS:
            raise StepError(f"{len(items)} items is over the limit of {MAX_ITEMS}")
        inner = all_kinds().get(config["do"]["kind"])
        if inner is None or inner.name == self.name:
            raise StepError(f"for_each cannot run kind {config['do']['kind']!r}")

        def run_one(index: int):
            item_ctx = replace(
                ctx,
                idempotency_key=f"{ctx.idempotency_key}-{index}",
                scope={**ctx.scope, "item": items[index], "index": index},
            )
            item_config = render_value(
                config["do"].get("config", {}), item_ctx.expression_context()
            )
            result = inner.execute(item_config, item_ctx)
            return result.output if isinstance(result, StepResult) else result

        with ThreadPoolExecutor(max_workers=config.get("concurrency", 4)) as pool:
            futures = [pool.submit(run_one, i) for i in range(len(items))]
            results, errors = [], []
            for index, future in enumerate(futures):
                try:
                    results.append(future.result())
                except StepError as exc:
                    results.append(None)
                    errors.append((index, exc))
        if errors:
            retryable = all(exc.retryable for _, exc in errors)
            summary = "; ".join(f"[{i}] {exc}" for i, exc in errors[:5])
            raise StepError(
                f"{len(errors)} of {len(items)} items failed: {summary}", retryable=retryable
            )
        return {"results": results, "count": len(results)}
