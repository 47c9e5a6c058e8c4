"""What every step kind is: a config schema, a description, an icon, and `execute`.

Step kinds run inside a Celery worker, outside any database transaction. They get plain data
in a StepContext and return plain JSON; they never touch the ORM.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


class StepError(Exception):
    """A step failed. `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class StepContext:
    run_id: int
    step_id: str
    attempt: int
    idempotency_key: str
    event: Mapping[str, Any]
    steps: Mapping[str, Any]  # {step_id: {"output": ...}} of the steps that already succeeded
    outbound_allow: Sequence[str] = ()
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("signalbox.steps"))


class StepKind:
    """Base class for a step kind; subclasses set the class attributes and `execute`."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    icon: ClassVar[str]
    group: ClassVar[str] = "actions"
    side_effects: ClassVar[bool] = False
    config_schema: ClassVar[dict[str, Any]]

    def execute(self, config: Mapping[str, Any], ctx: StepContext) -> Any:
        raise NotImplementedError
