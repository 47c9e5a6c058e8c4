"""Requests to the editor's pages as htmx makes them, what they answer (HX-Trigger, error
boxes), and the `shop` workflow the editor tests open.
"""

from __future__ import annotations

import json
import re
from html import unescape as html_unescape

from django.test import Client

from tests.factories import definition, http_step, log_step
from workflows.authoring.definitions import put_workflow
from workflows.catalog.models import Workflow

EDIT = "/workflows/{}/edit/"


def put_shop() -> Workflow:
    """The draft the editor tests open: an HTTP charge, then a log step."""
    raw = definition(
        http_step("charge", "https://pay.example.com/charge"),
        log_step("done", after=("charge",)),
    )
    workflow, _ = put_workflow(slug="shop", raw=raw)
    return workflow


def post(client: Client, path: str, raw: dict | None = None, **data):
    if raw is not None:
        data["definition"] = json.dumps(raw)
    return client.post(path, data, HTTP_HX_REQUEST="true")


def apply_first_step(client: Client, workflow: Workflow, form: dict[str, str]):
    """Submit the step form of the draft's first step with the `form` fields."""
    return post(client, EDIT.format(workflow.slug) + "step/apply", workflow.draft, index=0, **form)


def trigger_of(response, name: str):
    return json.loads(response["HX-Trigger"])[name]


def error_box(html: str, field: str) -> str:
    """The text of a field's error box (id err-<field>), tags removed."""
    found = re.search(rf'id="err-{re.escape(field)}"[^>]*>(.*?)</div>', html, re.S)
    assert found, f"no error box for {field}"
    return html_unescape(re.sub(r"<[^>]+>", " ", found.group(1))).strip()
