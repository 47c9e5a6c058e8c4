"""The import contract `make lint` enforces: the checker of module cycles finds them, and
the project's contracts (pyproject.toml) hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

from tests.import_contracts import module_cycles

ROOT = Path(__file__).resolve().parent.parent


def graph_of(*imports: tuple[str, str]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in imports:
        graph.add_import(importer=importer, imported=imported)
    return graph


def test_a_loop_of_modules_is_found_as_one_cycle_in_import_order():
    graph = graph_of(("app.a", "app.b"), ("app.b", "app.c"), ("app.c", "app.a"), ("app.c", "app.d"))

    assert module_cycles(graph, {"app"}) == [["app.a", "app.b", "app.c"]]


def test_modules_that_import_one_way_have_no_cycle():
    graph = graph_of(("app.a", "app.b"), ("app.b", "app.c"), ("app.a", "app.c"))

    assert module_cycles(graph, {"app"}) == []


def test_each_separate_loop_is_reported_and_outside_packages_are_ignored():
    graph = graph_of(
        ("app.x", "app.y"),
        ("app.y", "app.x"),
        ("app.p", "app.q"),
        ("app.q", "app.p"),
        ("other.m", "other.n"),
        ("other.n", "other.m"),
    )

    assert module_cycles(graph, {"app"}) == [["app.p", "app.q"], ["app.x", "app.y"]]


def test_the_project_keeps_its_import_contract():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout
