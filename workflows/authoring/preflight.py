"""What a run of a draft would trip over, found before anyone publishes it.

The definition's own validation (workflows/core/definition.py) says whether a definition is well
formed; a well-formed definition can still fail every run on something already visible in
the editor:

- an expression or `{{ … }}` template that reads `steps.<id>` of a step that does not exist
  (deleted or renamed), of a step that cannot have finished before this one, or of the
  step itself; or a field of such a step's output that its kind never writes;
- a `vars.<name>` the definition does not set;
- an HTTP request (or an event sent to a `url` by `publish` or `emit_event`'s `to`) to an
  address the outbound guard (workflows/infra/outbound.py) will refuse: loopback, private,
  link-local, metadata… unless allowlisted in SIGNALBOX_OUTBOUND_ALLOW;
- an event sent to a connection that does not exist, or to a target it cannot take
  (destination_checks.py).

The editor shows these with the definition's own problems and refuses to publish them.
Reads are presence tests inside `has(…)` are not reported: that is how a definition asks
whether something is there. A URL whose host is a template, and a host name other than
`localhost`, can only be judged when the run resolves it (no DNS lookups at edit time: they
would slow every autosave and reach out of the machine).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from workflows.authoring.destination_checks import destination_problems
from workflows.core.definition import InvalidDefinition, Problem
from workflows.core.expressions import TEMPLATE
from workflows.infra.outbound import Allowlist, is_public
from workflows.steps import registry

__all__ = [
    "OUTPUT_FIELDS",
    "RunsWouldFail",
    "outbound_problems",
    "preflight",
    "reference_problems",
    "refuse_failing_runs",
    "run_problems",
]

# The output fields of kinds whose output is fixed (workflows/steps/control.py, waiting.py);
# other kinds' outputs depend on their config or on what a server answers.
OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "condition": ("result",),
    "switch": ("case",),
    "filter": ("passed",),
    "delay": ("until",),
}
STEP_FIELDS = ("output", "port")  # what `steps.<id>` holds

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# CEL string literals (raw, bytes, triple-quoted): what they say is text, not a reference.
STRING = re.compile(
    r"""(?:[rRbB]{1,2})?(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')"""
)
# `steps.a.output.b` or `steps["a"]…`: the step id, then up to two member names.
STEP_READ = re.compile(
    rf"""(?<![\w.])steps\s*(?:\.\s*(?P<dot>{IDENT})|\[\s*(?P<q>["'])(?P<key>[^"'\\]*)(?P=q)\s*\])"""
    rf"""(?:\s*\.\s*(?P<field>{IDENT})(?:\s*\.\s*(?P<sub>{IDENT}))?)?"""
)
VARS_READ = re.compile(
    rf"""(?<![\w.])vars\s*(?:\.\s*(?P<dot>{IDENT})|\[\s*(?P<q>["'])(?P<key>[^"'\\]*)(?P=q)\s*\])"""
)
PRESENCE = re.compile(r"has\(\s*$")
LOCALHOST = re.compile(r"^(?:localhost|.+\.localhost|localhost\.localdomain)\.?$", re.IGNORECASE)
ALLOW_HINT = (
    "an operator can allow it with SIGNALBOX_OUTBOUND_ALLOW (a host name or a CIDR such as {})"
)


def preflight(raw: Any, *, allow: Iterable[str] | None = None) -> list[Problem]:
    """Every problem a run of `raw` would hit, for a definition valid or not."""
    if not isinstance(raw, Mapping):
        return []
    entries = settings.SIGNALBOX_OUTBOUND_ALLOW if allow is None else allow
    return (
        reference_problems(raw) + outbound_problems(raw, allow=entries) + destination_problems(raw)
    )


class RunsWouldFail(InvalidDefinition):
    """A well-formed definition that every run would trip over: it is not published (the
    editor refuses it too). `errors` names each problem's step."""

    def __init__(self, problems: list[Problem], *, raw: Mapping[str, Any]):
        super().__init__(problems)
        self.errors = with_steps(raw, problems)


def refuse_failing_runs(raw: Any) -> None:
    """Raise RunsWouldFail when `raw` has a problem a run would hit (for a publish)."""
    if problems := preflight(raw):
        raise RunsWouldFail(problems, raw=raw)


def run_problems(raw: Any) -> list[dict[str, Any]]:
    """What a publish of `raw` would be refused for: {path, message, step} each."""
    return with_steps(raw, preflight(raw))


def with_steps(raw: Any, problems: list[Problem]) -> list[dict[str, Any]]:
    return [{**p.as_dict(), "step": step_at(raw, p.path)} for p in problems]


def step_at(raw: Any, path: str) -> str | None:
    """The id of the step a problem's JSON pointer (`/steps/<index>/…`) is in."""
    parts = path.split("/")
    steps = raw.get("steps") if isinstance(raw, Mapping) else None
    if len(parts) < 3 or parts[1] != "steps" or not parts[2].isdigit():
        return None
    if not isinstance(steps, list) or int(parts[2]) >= len(steps):
        return None
    step = steps[int(parts[2])]
    return step.get("id") if isinstance(step, dict) and isinstance(step.get("id"), str) else None


# --- references -------------------------------------------------------------------------------
def _steps(raw: Mapping[str, Any]) -> list[tuple[int, dict]]:
    steps = raw.get("steps")
    if not isinstance(steps, list):
        return []
    return [(i, s) for i, s in enumerate(steps) if isinstance(s, dict)]


def _predecessors(raw: Mapping[str, Any]) -> dict[str, set[str]]:
    before: dict[str, set[str]] = {}
    for _i, step in _steps(raw):
        after = step.get("after") if isinstance(step.get("after"), list) else []
        if isinstance(step.get("id"), str):
            before.setdefault(step["id"], set()).update(a for a in after if isinstance(a, str))
    for edge in raw.get("edges") if isinstance(raw.get("edges"), list) else []:
        if isinstance(edge, dict) and all(isinstance(edge.get(k), str) for k in ("from", "to")):
            before.setdefault(edge["to"], set()).add(edge["from"])
    return before


def upstream_of(raw: Mapping[str, Any], step_id: str) -> set[str]:
    """Every step that can have finished before `step_id` starts."""
    before = _predecessors(raw)
    seen: set[str] = set()
    todo = list(before.get(step_id, ()))
    while todo:
        current = todo.pop()
        if current not in seen and current != step_id:
            seen.add(current)
            todo.extend(before.get(current, ()))
    return seen


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}/{i}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}/{key}")


def _expressions(step: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(config path, CEL text) of every expression and template of a step."""
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    kind = registry.all_kinds().get(step.get("kind"))
    found: list[tuple[str, str]] = []
    if kind is not None:
        with contextlib.suppress(KeyError, TypeError, AttributeError):  # a half-written config
            found += [(p, e) for p, e in kind.expressions(config) if isinstance(e, str)]
    whole = {p for p, _e in found}
    for path, text in _strings(config):
        if path not in whole:
            found += [(path, m.group(1)) for m in TEMPLATE.finditer(text)]
    return found


def _blank_strings(expression: str) -> str:
    """The expression with every string literal emptied, keeping offsets."""
    return STRING.sub(lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', expression)


def _reads(pattern: re.Pattern, expression: str) -> Iterator[re.Match]:
    """Matches in the code outside string literals, against the expression itself (offsets
    are kept), so a quoted key (`steps["a"]`) reads as written."""
    code = _blank_strings(expression)
    for found in pattern.finditer(code):
        if PRESENCE.search(code[: found.start()]):
            continue  # has(steps.x…): asking whether it is there is fine
        match = pattern.match(expression, found.start(), found.end())
        if match is not None:
            yield match


def reference_problems(raw: Mapping[str, Any]) -> list[Problem]:
    steps = _steps(raw)
    kinds = {s.get("id"): s.get("kind") for _i, s in steps if isinstance(s.get("id"), str)}
    variables = raw.get("vars") if isinstance(raw.get("vars"), dict) else {}
    problems: list[Problem] = []
    for index, step in steps:
        own = step.get("id")
        upstream: set[str] | None = None
        for path, expression in _expressions(step):
            where = f"/steps/{index}/config{path}"
            seen: set[str] = set()
            for match in _reads(STEP_READ, expression):
                target = match.group("dot") or match.group("key") or ""
                message = None
                if target == own:
                    message = f"reads steps.{target}, its own output, which it has not yet"
                elif target not in kinds:
                    message = (
                        f"reads steps.{target}, but there is no step {target!r} "
                        "(deleted or renamed?): every run would fail here"
                    )
                else:
                    upstream = upstream if upstream is not None else upstream_of(raw, own)
                    if target not in upstream:
                        message = (
                            f"reads steps.{target}, but step {target!r} does not run before "
                            f"this one: wire it before {own!r} or read another step"
                        )
                    else:
                        message = _field_problem(target, kinds[target], match)
                if message and message not in seen:
                    seen.add(message)
                    problems.append(Problem(where, message))
            for match in _reads(VARS_READ, expression):
                name = match.group("dot") or match.group("key") or ""
                message = f"reads vars.{name}, but the workflow sets no variable {name!r}"
                if name not in variables and message not in seen:
                    seen.add(message)
                    problems.append(Problem(where, message))
    return problems


def _field_problem(target: str, kind: Any, match: re.Match) -> str | None:
    field, sub = match.group("field"), match.group("sub")
    if field is None:
        return None
    if field not in STEP_FIELDS:
        return f"reads steps.{target}.{field}: a step has only output and port"
    known = OUTPUT_FIELDS.get(str(kind))
    if field == "output" and sub is not None and known and sub not in known:
        return (
            f"reads steps.{target}.output.{sub}, but a {kind} step's output has only "
            + ", ".join(known)
        )
    return None


# --- the outbound guard -------------------------------------------------------------------------
def _urls(step: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(config path, URL) of the HTTP requests a step makes, a for_each's inner one too."""
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    if step.get("kind") in ("http_request", "publish") and isinstance(config.get("url"), str):
        yield "/url", config["url"]
    if step.get("kind") == "emit_event" and isinstance(config.get("to"), list):
        for index, destination in enumerate(config["to"]):
            if isinstance(destination, dict) and isinstance(destination.get("url"), str):
                yield f"/to/{index}/url", destination["url"]
    inner = config.get("do") if isinstance(config.get("do"), dict) else {}
    inner_config = inner.get("config") if isinstance(inner.get("config"), dict) else {}
    if (
        step.get("kind") == "for_each"
        and inner.get("kind") == "http_request"
        and isinstance(inner_config.get("url"), str)
    ):
        yield "/do/config/url", inner_config["url"]


def refused_address(url: str, allow: Allowlist) -> str | None:
    """Why the guard will refuse `url`, or None when it will not (or cannot yet tell)."""
    authority_end = url.find("/", url.find("://") + 3) if "://" in url else -1
    head = url if authority_end == -1 else url[:authority_end]
    if "{{" in head:
        return None  # the host comes from the run's data
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None  # the format check reports it
    if not host or allow.allows_host(host):
        return None
    if LOCALHOST.match(host):
        addresses = [ipaddress.ip_address("127.0.0.1")]
    else:
        try:
            addresses = [ipaddress.ip_address(host.split("%", 1)[0])]
        except ValueError:
            return None  # a name: judged when the run resolves it
    for address in addresses:
        if not is_public(address) and not allow.allows_address(address):
            shown = host if str(address) == host else f"{host} ({address})"
            return (
                f"the outbound guard will refuse {shown}: not a public address; "
                + ALLOW_HINT.format(f"{address}/{address.max_prefixlen}")
            )
    return None


def outbound_problems(raw: Mapping[str, Any], *, allow: Iterable[str]) -> list[Problem]:
    allowlist = Allowlist(allow)
    problems = []
    for index, step in _steps(raw):
        for path, url in _urls(step):
            if message := refused_address(url, allowlist):
                problems.append(Problem(f"/steps/{index}/config{path}", message))
    return problems
