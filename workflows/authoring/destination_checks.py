"""Destinations a definition sends events to (a `publish` step, an `emit_event`'s `to`),
checked against the connections that exist: found before publishing, not by the first run.

A destination naming a connection that does not exist, one whose kind cannot be published
to, a target option the kind does not know (or a required one missing, or one of the wrong
type), or a mode the connection cannot carry (binary on MQTT 3.1.1) is a problem at the
destination's path. A name or value that is a `{{ … }}` template is judged when the run
renders it. A disabled connection is not a problem: it may be enabled again before a run
needs it (a run that meets it disabled fails with `invalid_target`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from workflows.core.definition import Problem
from workflows.events.connectors import registry
from workflows.events.connectors.base import InvalidConnection
from workflows.events.models import Connection

SENDING_KINDS = ("publish", "emit_event")


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _destinations(kind: Any, config: Any, path: str) -> Iterator[tuple[str, Mapping]]:
    if not isinstance(config, Mapping):
        return
    if kind == "publish":
        yield path, config
    elif kind == "emit_event" and isinstance(config.get("to"), list):
        for index, destination in enumerate(config["to"]):
            if isinstance(destination, Mapping):
                yield f"{path}/to/{index}", destination


def destinations(raw: Any) -> Iterator[tuple[str, Mapping]]:
    """(pointer, destination) of every connection destination in a raw definition, a
    for_each's inner step's too."""
    steps = raw.get("steps") if isinstance(raw, Mapping) else None
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, Mapping):
            continue
        config = step.get("config")
        yield from _destinations(step.get("kind"), config, f"/steps/{index}/config")
        inner = config.get("do") if isinstance(config, Mapping) else None
        if step.get("kind") == "for_each" and isinstance(inner, Mapping):
            yield from _destinations(
                inner.get("kind"), inner.get("config"), f"/steps/{index}/config/do/config"
            )


def _probe(sink_class, target: Mapping) -> dict:
    """The target as it can be checked now: a templated known option is left out (a
    required one stands in as a plain name); a templated unknown one stays, to be named."""
    probe = {}
    for name, value in target.items():
        if not _templated(value):
            probe[name] = value
        elif name in sink_class.required_target or name not in sink_class.target_names:
            probe[name] = "x"
    return probe


def destination_problems(raw: Any) -> list[Problem]:
    found = [
        (path, d)
        for path, d in destinations(raw)
        if isinstance(d.get("connection"), str) and not _templated(d["connection"])
    ]
    if not found:
        return []  # no query for a definition that names no connection
    names = {d["connection"] for _path, d in found}
    rows = {
        name: (kind, options)
        for name, kind, options in Connection.objects.filter(name__in=names).values_list(
            "name", "kind", "options"
        )
    }
    sinks = registry.all_sinks()
    problems = []
    for path, destination in found:
        name = destination["connection"]
        if name not in rows:
            problems.append(
                Problem(
                    f"{path}/connection",
                    f"no connection named {name!r}; add it first (the Connections page, "
                    f"POST /api/v1/connections or manage.py connectors add)",
                )
            )
            continue
        kind, options = rows[name]
        sink_class = sinks.get(kind)
        if sink_class is None:
            problems.append(
                Problem(f"{path}/connection", f"{name!r} is a {kind} connection: no sink")
            )
            continue
        problem = _target_problem(sink_class, destination, options or {})
        if problem:
            where, message = problem
            problems.append(Problem(f"{path}{where}", f"{name!r} ({kind}): {message}"))
    return problems


def _target_problem(sink_class, destination: Mapping, options: dict) -> tuple[str, str] | None:
    target = destination.get("target")
    mode = destination.get("mode", "binary")
    if isinstance(target, Mapping):  # else the step's schema says what is wrong
        try:
            sink_class.check_target(_probe(sink_class, target), mode=mode)
        except InvalidConnection as exc:
            return "/target", str(exc)
    try:
        sink_class.check_mode(options, mode=mode)
    except InvalidConnection as exc:
        return "/mode", str(exc)
    return None
