"""bench.engine's workflows (light steps: `log` and `transform`) and, for each, its twin
sent to the bare Celery baseline (bench/engine_baseline.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIGNALBOX = "signalbox"
CELERY = "celery"
SOURCE = "/bench/engine"
EVENT_TYPE_PREFIX = "com.example.bench.engine."
FAN_WIDTH = 100


# --- the workflows and their baseline twins ---------------------------------------------------


def light_step(step_id: str, index: int, after: list[str]) -> dict:
    """`log` and `transform` in turn, each rendering a small template, as real light steps do."""
    step: dict[str, Any] = {"id": step_id}
    if index % 2:
        step["kind"] = "transform"
        step["config"] = {"output": {"order": "{{ event.data.order }}", "step": index}}
    else:
        step["kind"] = "log"
        step["config"] = {"message": f"step {index} of run {{{{ run.id }}}}"}
    if after:
        step["after"] = after
    return step


def chain_definition(name: str, length: int) -> list[dict]:
    ids = [f"s{index:02d}" for index in range(1, length + 1)]
    return [light_step(step_id, index, ids[index - 1 : index]) for index, step_id in enumerate(ids)]


def fan_out_definition(width: int) -> list[dict]:
    branches = [f"b{index:03d}" for index in range(width)]
    return [
        light_step("start", 0, []),
        *(light_step(step_id, index + 1, ["start"]) for index, step_id in enumerate(branches)),
        light_step("join", 0, branches),
    ]


def baseline_app():
    from bench import engine_baseline  # after the environment names its Redis and prefix

    return engine_baseline


@dataclass(frozen=True)
class Shape:
    key: str
    label: str
    slug: str  # the workflow (shared by the two chain-of-40 measurements)
    steps: int
    runs: int
    quick_runs: int
    steps_definition: Callable[[], list[dict]]
    baseline: Callable[[str], Any]  # run id -> a Celery signature
    one_at_a_time: bool = False

    @property
    def event_type(self) -> str:
        return EVENT_TYPE_PREFIX + self.slug

    def definition(self) -> dict:
        return {
            "name": f"bench: {self.label}",
            "triggers": [{"event": self.event_type}],
            "steps": self.steps_definition(),
        }


SHAPES = [
    Shape("1-step", "1 step", "bench-1-step", 1, 200, 30,
          lambda: chain_definition("1", 1), lambda run: baseline_app().chain_of(run, 1)),
    Shape("1-step-alone", "1 step, one at a time", "bench-1-step", 1, 100, 10,
          lambda: chain_definition("1", 1), lambda run: baseline_app().chain_of(run, 1),
          one_at_a_time=True),
    Shape("3-step", "chain of 3", "bench-3-step", 3, 200, 30,
          lambda: chain_definition("3", 3), lambda run: baseline_app().chain_of(run, 3)),
    Shape("fan-out", f"fan-out {FAN_WIDTH} + join", "bench-fan-out", FAN_WIDTH + 2, 2, 1,
          lambda: fan_out_definition(FAN_WIDTH),
          lambda run: baseline_app().fan_out(run, FAN_WIDTH)),
    Shape("chain-40", "chain of 40", "bench-chain-40", 40, 3, 1,
          lambda: chain_definition("40", 40), lambda run: baseline_app().chain_of(run, 40)),
    Shape("chain-40-alone", "chain of 40, one at a time", "bench-chain-40", 40, 2, 1,
          lambda: chain_definition("40", 40), lambda run: baseline_app().chain_of(run, 40),
          one_at_a_time=True),
]  # fmt: skip
