"""Parse and validate workflow definitions, and keep each version's parsed definition.

The bottom of the services: the run services read a version's definition here on every
step, and the writers of drafts and versions validate with the same `parse_definition`.
It imports no other service.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from workflows.catalog.models import WorkflowVersion
from workflows.core import definition as definition_format
from workflows.core import expressions
from workflows.steps import registry


def _expression_error(expression: str) -> str | None:
    try:
        expressions.check(expression)
    except expressions.ExpressionError as exc:
        return f"invalid expression {expression!r}: {exc.message}"
    return None


def _template_errors(config) -> list[tuple[str, str]]:
    return [
        (path, f"invalid {{{{ }}}} expression: {message}")
        for path, message in expressions.check_templates(config)
    ]


def parse_definition(raw, *, stored: bool = False) -> definition_format.Definition:
    """Validate against the format, the step registry and the expression language;
    raises InvalidDefinition listing every problem. `stored`: a version already saved,
    loaded to run, which may predate the rule that secrets go only into secret-capable
    fields (its step then fails before rendering one, see execution.render_config)."""
    return definition_format.parse(
        raw,
        kinds=registry.all_kinds(),
        check_expression=_expression_error,
        check_templates=_template_errors,
        check_secrets=not stored,
    )


# Versions are immutable, so a parsed definition is kept by version id for the process:
# matching an event parses each listening version once, not once per event. Sized for the
# versions one process works with at a time (the live ones of busy workflows); the least
# recently used goes first.
PARSED_CACHE_SIZE = 4096
_parsed: OrderedDict[int, definition_format.Definition] = OrderedDict()
_parsed_lock = threading.Lock()


def definition_for(version: WorkflowVersion) -> definition_format.Definition:
    if version.pk is None:  # not saved: nothing to key a cache entry by
        return parse_definition(version.definition, stored=True)
    with _parsed_lock:
        found = _parsed.get(version.pk)
        if found is not None:
            _parsed.move_to_end(version.pk)
            return found
    # A version loaded with its definition (select_related) is parsed as it is; one loaded
    # without it (only()/defer()) is read once.
    raw = (
        version.definition
        if "definition" in version.__dict__
        else WorkflowVersion.objects.values_list("definition", flat=True).get(pk=version.pk)
    )
    parsed = parse_definition(raw, stored=True)
    with _parsed_lock:
        _parsed[version.pk] = parsed
        while len(_parsed) > PARSED_CACHE_SIZE:
            _parsed.popitem(last=False)
    return parsed
