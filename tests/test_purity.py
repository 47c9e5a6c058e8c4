"""The engine core and the definition format stay free of Django and Celery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("django", "celery"))))
"""


@pytest.mark.parametrize("module", ["workflows.engine", "workflows.definition"])
def test_the_module_imports_neither_django_nor_celery(module):
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_probe_would_notice_a_django_import():
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(module="django.conf")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "django.conf" in json.loads(result.stdout.strip().splitlines()[-1])
