"""Small builders for test data: events and workflow definitions."""

from __future__ import annotations

import uuid


def cloudevent(type_: str = "com.example.order.placed", **overrides) -> dict:
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/tests",
        "type": type_,
        "datacontenttype": "application/json",
        "data": {"order": 42},
    }
    event.update(overrides)
    return event


def definition(*steps: dict, event: str = "com.example.order.placed", name: str = "Test") -> dict:
    return {"name": name, "triggers": [{"event": event}], "steps": list(steps)}


def log_step(step_id: str, *, after: tuple[str, ...] = (), message: str = "hello") -> dict:
    step = {"id": step_id, "kind": "log", "config": {"message": message}}
    if after:
        step["after"] = list(after)
    return step


def http_step(step_id: str, url: str, *, after: tuple[str, ...] = (), **extra) -> dict:
    step = {"id": step_id, "kind": "http_request", "config": {"url": url, "method": "POST"}}
    step["config"].update(extra.pop("config", {}))
    if after:
        step["after"] = list(after)
    step.update(extra)
    return step
