"""The engine core, the definition format and the step kinds stay free of Django and Celery;
no step kind reaches into the models or the services."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
{imports}
print(json.dumps(sorted(m for m in sys.modules if {which})))
"""
DJANGO_OR_CELERY = 'm.split(".")[0] in ("django", "celery")'
# The tables (each context's models) and the contexts that act on them.
MODELS_OR_SERVICES = (
    'm == "django.db" or m.endswith(".models") or m.startswith(("django.db.", "workflows.'
    + '", "workflows.'.join(
        ["catalog", "runs", "queries", "authoring", "recovery", "operations", "tasks"]
    )
    + '"))'
)


def imported(imports: str, which: str = DJANGO_OR_CELERY) -> list[str]:
    """The modules matching `which` that a fresh interpreter holds after running `imports`."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports, which=which)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "workflows.core.engine",
        "workflows.core.definition",
        # the expression language, its bounded interpreter and its value conversions
        "workflows.core.expressions",
        "workflows.core.cel_runtime",
        "workflows.core.cel_values",
        # statuses and their moves, where secrets may appear, the lineage extensions
        "workflows.core.states",
        "workflows.core.secret_places",
        "workflows.core.lineage",
        # the loop, and the step context it hands each item
        "workflows.steps.for_each",
    ],
)
def test_the_module_imports_neither_django_nor_celery(module):
    assert imported(f"import {module}") == []


def test_no_step_kind_imports_the_models_or_the_services():
    every_kind = "from workflows.steps import registry\nregistry.all_kinds()"

    assert imported(every_kind, MODELS_OR_SERVICES) == []


def test_the_probe_would_notice_a_django_import():
    assert "django.conf" in imported("import django.conf")
