"""What every step kind is: a config schema, a description, an icon, and `execute`.

Step kinds run inside a Celery worker, outside any database transaction. They get plain data
in a StepContext and return plain JSON (or a StepResult naming a port, or asking to wait);
they never touch the ORM. What needs the database (emitting an event, starting a child
run) is reached through callables in the context.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from workflows.core.secret_places import matches


class StepError(Exception):
    """A step failed. `retryable` says whether another attempt may succeed; `code` names the
    kind of error ("http.503", "network", "timeout", …) for retry policies to match."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        code: str = "",
    ):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.code = code


@dataclass(frozen=True)
class Wait:
    """Park the step without holding a worker until something happens.

    timer: until `until`. event: until an event of `event_type` for which the CEL
    expression `match` is true arrives (or `timeout_seconds` passes: port "timeout").
    child: until the child run of `workflow` started with `input` finishes."""

    kind: str  # "timer" | "event" | "child"
    until: datetime | None = None
    event_type: str = ""
    match: str = ""
    timeout_seconds: float | None = None
    workflow: str = ""
    input: Any = None


@dataclass(frozen=True)
class StepResult:
    output: Any = None
    port: str = "success"
    wait: Wait | None = None


class ItemCheckpoints(Protocol):
    """What the earlier attempts of a step that runs many items (`for_each`) already did in
    this run: each item's output by index, kept as soon as the item succeeded. The services
    implement it over the database; a kind only sees these two calls."""

    def done(self) -> dict[int, Any]:
        """The outputs recorded so far, by item index."""
        ...

    def record(self, index: int, output: Any) -> None:
        """Keep one item's output; recording an index a second time changes nothing."""
        ...


@dataclass(frozen=True)
class StepContext:
    run_id: int
    step_id: str
    attempt: int
    idempotency_key: str
    event: Mapping[str, Any]
    steps: Mapping[str, Any]  # {step_id: {"output": ...}} of the steps that already succeeded
    outbound_allow: Sequence[str] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)
    # Only the secrets the step's secret-capable fields name (workflows/core/secret_places.py).
    secrets: Mapping[str, str] = field(default_factory=dict)
    # A `python` step's arguments marked secret, rendered.
    secret_input: Mapping[str, str] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)
    # Extra names for expressions, e.g. `item` and `index` inside a for_each.
    scope: Mapping[str, Any] = field(default_factory=dict)
    # Set by the services: publish a CloudEvent with this run as its cause.
    emit: Callable[[dict], dict] | None = None
    # Set by the services: a stored event by its id, as an Envelope (what emit_event sends
    # on to its `to` destinations).
    stored_event: Callable[[int], Any] | None = None
    # Set by the services for `publish`: the CloudEvent this attempt sends (an Envelope,
    # raises InvalidEvent), and a broker connection by name (a ConnectionConfig, raises
    # InvalidConnection).
    outgoing_event: Callable[[dict], Any] | None = None
    connection: Callable[[str], Any] | None = None
    # Set by the services: per-item checkpoints of this step in this run (for_each).
    checkpoints: ItemCheckpoints | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("signalbox.steps"))

    def expression_context(self, **extra: Any) -> dict[str, Any]:
        """What expressions in this step can read."""
        return {
            "event": self.event,
            "steps": self.steps,
            "run": self.run,
            "vars": self.vars,
            "secrets": self.secrets,
            **self.scope,
            **extra,
        }


class StepKind:
    """Base class for a step kind; subclasses set the class attributes and `execute`."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    icon: ClassVar[str]
    group: ClassVar[str] = "actions"
    side_effects: ClassVar[bool] = False
    # Pure and quick: acts on nothing outside the run (no I/O, no events, no child runs),
    # never waits, and reads only the context it is given. The worker runs a light step
    # inside the run's transaction (claim, run, result and what follows in one commit)
    # and runs the next light step in the same task. A kind with side effects never is.
    light: ClassVar[bool] = False
    # The kind hands the whole context to code the definition cannot show (a `python`
    # function may read any step's output): every upstream output is loaded for it. Secrets
    # are never loaded wholesale: every kind gets only those its secret-capable fields name.
    reads_whole_context: ClassVar[bool] = False
    config_schema: ClassVar[dict[str, Any]]
    # Config fields holding bare CEL expressions (checked at validation, evaluated by the
    # kind itself); every other string may contain `{{ … }}` and is rendered beforehand.
    expression_fields: ClassVar[tuple[str, ...]] = ()
    # Config fields passed to `execute` unrendered, because the kind renders them itself in
    # a narrower scope (for_each renders its inner step per item).
    raw_fields: ClassVar[tuple[str, ...]] = ()
    # Config paths a `secrets.<name>` may be rendered into ("/headers/*", "/auth/password"):
    # values that only leave the system, never stored or shown. A definition naming a
    # secret anywhere else is refused (workflows/core/secret_places.py).
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def expressions(self, config: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(config path, CEL expression) pairs, for validation."""
        return [
            (f"/{f}", config[f]) for f in self.expression_fields if isinstance(config.get(f), str)
        ]

    def secret_capable(self, config: Mapping[str, Any], path: tuple) -> bool:
        """Whether a secret may be rendered into the config value at `path`."""
        return any(matches(pattern, path) for pattern in self.secret_fields)

    def secret_places(self, config: Mapping[str, Any]) -> list[str]:
        """The secret-capable fields, as shown in messages."""
        return list(self.secret_fields)

    def secret_destination_problems(self, config: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(config pointer, message) for what makes sending this step's secrets unsafe (an
        HTTP host that data could choose); asked only when the config names a secret."""
        return []

    def needs_whole_context(self, config: Mapping[str, Any]) -> bool:
        """True when a step of this kind with this config may read any upstream output or
        secret, not just those its config names."""
        return self.reads_whole_context

    def ports(self, config: Mapping[str, Any]) -> list[str]:
        """Output ports edges may leave from, besides "failure" which every step has."""
        return ["success"]

    def execute(self, config: Mapping[str, Any], ctx: StepContext) -> Any:
        raise NotImplementedError
