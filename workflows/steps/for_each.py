"""`for_each`: run an action for every item of a list, a few at a time, and join the results.

Each item runs the inner step kind with `item` and `index` in its expression context and its
own idempotency key (the step's key + index), so a retried loop does not repeat effects on
receivers that deduplicate.

Each item's output is checkpointed as soon as it succeeds (through `ctx.checkpoints`, when
the services give one), and a later attempt of the step in the same run runs only the items
that have no checkpoint: one failed item out of a thousand costs one call on retry, not a
thousand. Checkpoints are positional: item `i` of this attempt's list is taken to be item `i`
of the earlier attempt's.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from workflows.core.cel_values import json_kind, unstorable
from workflows.core.expressions import evaluate, render_value
from workflows.steps.base import StepContext, StepError, StepKind, StepResult
from workflows.steps.registry import all_kinds, register

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

    def _inner(self, config):
        inner = all_kinds().get(str((config.get("do") or {}).get("kind", "")))
        return None if inner is None or inner.name == self.name else inner

    def secret_capable(self, config, path):
        # The inner step's secret-capable fields, under /do/config.
        inner = self._inner(config)
        if inner is None or tuple(path[:2]) != ("do", "config"):
            return False
        return inner.secret_capable((config.get("do") or {}).get("config") or {}, path[2:])

    def secret_places(self, config):
        inner = self._inner(config)
        inner_config = (config.get("do") or {}).get("config") or {}
        return [f"/do/config{p}" for p in inner.secret_places(inner_config)] if inner else []

    def secret_destination_problems(self, config):
        inner = self._inner(config)
        if inner is None:
            return []
        inner_config = (config.get("do") or {}).get("config") or {}
        return [
            (f"/do/config{path}", message)
            for path, message in inner.secret_destination_problems(inner_config)
        ]

    def needs_whole_context(self, config):
        # Each item runs the inner kind with this step's context.
        inner = all_kinds().get(str((config.get("do") or {}).get("kind", "")))
        return inner is None or inner.needs_whole_context(
            (config.get("do") or {}).get("config") or {}
        )

    def execute(self, config, ctx: StepContext):
        items = evaluate(config["items"], ctx.expression_context(), where=f"step {ctx.step_id}")
        if not isinstance(items, list):
            raise StepError(f"items must evaluate to a list, got {json_kind(items)}")
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
                checkpoints=None,  # the loop's checkpoints are the loop's, not the item's
            )
            item_config = render_value(
                config["do"].get("config", {}), item_ctx.expression_context()
            )
            result = inner.execute(item_config, item_ctx)
            output = result.output if isinstance(result, StepResult) else result
            # Checked here: the output is checkpointed to the database as soon as it comes.
            problem = unstorable(output, where=f"item {index} output")
            if problem:
                raise StepError(problem, code="output")
            return output

        checkpoints = ctx.checkpoints
        # Positional: a checkpoint past the end of this attempt's list (the expression now
        # gives a shorter one) belongs to no item and is ignored.
        outputs: dict[int, Any] = {
            index: output
            for index, output in (checkpoints.done() if checkpoints else {}).items()
            if 0 <= index < len(items)
        }
        reused = len(outputs)
        if reused:
            ctx.logger.info(
                "run %s step %s: %d of %d items kept from earlier attempts",
                ctx.run_id,
                ctx.step_id,
                reused,
                len(items),
            )
        errors: dict[int, StepError] = {}
        crash: BaseException | None = None
        pool = ThreadPoolExecutor(max_workers=config.get("concurrency", 4))
        try:
            pending: dict[Future, int] = {
                pool.submit(run_one, i): i for i in range(len(items)) if i not in outputs
            }
            # Results are taken (and checkpointed) here, in the calling thread, as they come:
            # the item threads never touch the database.
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    if future.cancelled():
                        continue
                    try:
                        output = future.result()
                    except StepError as exc:
                        errors[index] = exc
                        continue
                    except BaseException as exc:  # noqa: BLE001 - re-raised below
                        # Start no more items; keep what the running ones finish, then fail.
                        if crash is None:
                            crash = exc
                            for other in pending:
                                other.cancel()
                        continue
                    outputs[index] = output
                    if checkpoints is not None:
                        checkpoints.record(index, output)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if crash is not None:
            raise crash
        if errors:
            retryable = all(exc.retryable for exc in errors.values())
            first = sorted(errors.items())[:5]
            summary = "; ".join(f"[{i}] {exc}" for i, exc in first)
            raise StepError(
                f"{len(errors)} of {len(items)} items failed: {summary}", retryable=retryable
            )
        results = [outputs[i] for i in range(len(items))]
        return {"results": results, "count": len(results)}
