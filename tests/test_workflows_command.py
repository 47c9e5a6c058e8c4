"""`manage.py workflows export|import`: workflows as files, for git."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import definition, log_step
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    out = StringIO()
    call_command("workflows", *args, stdout=out)
    return out.getvalue()


def test_export_writes_the_draft_as_json_and_import_reads_it_back(tmp_path):
    put_workflow(slug="orders", raw=definition(log_step("a"), log_step("b", after=("a",))))
    path = tmp_path / "orders.json"

    said = run("export", "orders", str(path))
    assert said.strip() == f"orders (the draft) written to {path}"
    assert json.loads(path.read_text()) == Workflow.objects.get(slug="orders").draft

    said = run("import", str(path), "--slug", "orders-copy")
    assert said.strip() == f"orders-copy: draft created from {path}"
    assert Workflow.objects.get(slug="orders-copy").draft == json.loads(path.read_text())


def test_export_writes_yaml_for_a_yaml_path_and_a_published_version_on_request(tmp_path):
    put_workflow(slug="orders", raw=definition(log_step("first")))
    publish_workflow(slug="orders")
    put_workflow(slug="orders", raw=definition(log_step("second")))
    path = tmp_path / "orders.yaml"

    run("export", "orders", str(path), "--version", "1")

    assert yaml.safe_load(path.read_text())["steps"][0]["id"] == "first"


def test_export_to_standard_output_with_a_dash():
    put_workflow(slug="orders", raw=definition(log_step("a")))

    said = run("export", "orders", "-", "--yaml")

    assert yaml.safe_load(said)["name"] == "Test"


def test_import_names_the_workflow_after_the_file_and_can_publish_it(tmp_path):
    path = tmp_path / "billing.yaml"
    path.write_text(yaml.safe_dump(definition(log_step("a"), name="Billing")))

    said = run("import", str(path), "--publish", "--note", "from git")

    workflow = Workflow.objects.get(slug="billing")
    assert said.strip() == f"billing: draft created from {path}; published as v1"
    assert workflow.published_version.number == 1
    assert workflow.published_version.note == "from git"


def test_an_invalid_file_lists_every_problem_fails_and_changes_nothing(tmp_path):
    put_workflow(slug="orders", raw=definition(log_step("a")))
    path = tmp_path / "orders.json"
    path.write_text(
        json.dumps(
            {"name": "x", "steps": [{"id": "a", "kind": "log"}, {"id": "b", "kind": "emailz"}]}
        )
    )

    with pytest.raises(CommandError) as refused:
        run("import", str(path))

    message = str(refused.value)
    assert "is not a valid workflow definition (2 problem(s)); nothing was changed" in message
    assert "/steps/0/config: 'message' is a required property" in message
    assert "/steps/1/kind: unknown step kind 'emailz'" in message
    assert Workflow.objects.get(slug="orders").draft == definition(log_step("a"))


def test_an_unreadable_file_says_where_it_stops_making_sense(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsteps: [\n")

    with pytest.raises(CommandError) as refused:
        run("import", str(path))

    message = str(refused.value)
    assert "broken.yaml: invalid YAML" in message
    assert "line 3, column 1" in message
    assert message.endswith("nothing was changed")

    assert not Workflow.objects.exists()


def test_the_command_exits_non_zero_on_an_invalid_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    done = subprocess.run(
        [sys.executable, "manage.py", "workflows", "import", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )

    assert done.returncode != 0
    assert "bad.json" in done.stderr
    assert "nothing was changed" in done.stderr


def test_export_of_an_unknown_workflow_or_version_fails_clearly(tmp_path):
    put_workflow(slug="orders", raw=definition(log_step("a")))

    with pytest.raises(CommandError, match="no workflow 'nope'"):
        run("export", "nope", str(tmp_path / "x.json"))
    with pytest.raises(CommandError, match="orders has no published version 3"):
        run("export", "orders", str(tmp_path / "x.json"), "--version", "3")


def test_a_file_name_that_is_no_slug_asks_for_one(tmp_path):
    path = tmp_path / "my workflow.json"
    path.write_text(json.dumps(definition(log_step("a"))))

    with pytest.raises(CommandError, match="pass --slug"):
        run("import", str(path))
