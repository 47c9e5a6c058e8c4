"""Where a workflow definition may use `secrets.<name>`: only in the config fields a step kind
declares secret-capable (`StepKind.secret_fields`), never anywhere else.

Masking by text replacement cannot keep a secret out of stored data (an encoding, a slice or
a format walks past it), so a secret must never reach a value that is stored, emitted or
shown: step outputs, event data, log lines. Fields that only leave the system (an HTTP
header, an SMTP password) are the only places it may be rendered into, and the stored copy
of a step's input keeps those fields unrendered.

Pure Python (no Django): the definition validator and the worker both use it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from workflows.core.expressions import TEMPLATE

# `secrets` used as a name in CEL (not `x.secrets`, not `my_secrets`). Over-approximates (the
# word inside a string literal counts), never under: CEL cannot reach a variable unnamed.
SECRETS_ROOT = re.compile(r"(?<![\w.])secrets\b")


def mentions_secrets(text: str) -> bool:
    return bool(SECRETS_ROOT.search(text))


def _expression_texts(value: Any, path: tuple, whole: bool) -> Iterator[tuple[tuple, str]]:
    """(path, CEL text) of every expression in `value`: the whole string when the field is
    a bare CEL expression, else each `{{ … }}` inside it."""
    if isinstance(value, str):
        if whole:
            yield path, value
        else:
            for match in TEMPLATE.finditer(value):
                yield path, match.group(1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _expression_texts(item, (*path, index), whole)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _expression_texts(item, (*path, key), whole)


def secret_uses(kind: Any, config: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """(config path, expression) of every expression in a step's config that names secrets."""
    bare = {path.split("/")[1] for path, _ in kind.expressions(config)}
    return [
        (path, text)
        for key, value in config.items()
        for path, text in _expression_texts(value, (key,), key in bare)
        if mentions_secrets(text)
    ]


def matches(pattern: str, path: tuple) -> bool:
    """Whether a config path matches a declared pattern ("/headers/*", "/auth/password")."""
    parts = pattern.strip("/").split("/")
    return len(parts) == len(path) and all(
        p == "*" or p == str(k) for p, k in zip(parts, path, strict=True)
    )


def pointer(path: tuple) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def misplaced_secrets(kind: Any, config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(config pointer, message) for every use of a secret outside a secret-capable field,
    every secret not named statically, and what the kind refuses around a secret (an HTTP
    destination that data could choose)."""
    problems = []
    uses = secret_uses(kind, config)
    for path, text in uses:
        if kind.secret_capable(config, path):
            if names_in(text) is None:
                problems.append(
                    (
                        pointer(path),
                        'name the secret (secrets.<name> or secrets["name"]): data must '
                        "not choose which secret is sent",
                    )
                )
            continue
        allowed = kind.secret_places(config)
        where = ", ".join(allowed) if allowed else "none in this step kind"
        problems.append(
            (
                pointer(path),
                f"secrets cannot be used here: a secret may only go into a secret-capable "
                f"field ({where}), so that it never ends up in stored data",
            )
        )
    if uses and hasattr(kind, "secret_destination_problems"):
        problems += kind.secret_destination_problems(config)
    return problems


def names_in(text: str) -> set[str] | None:
    """The secret names `secrets.<name>` / `secrets["name"]` in a CEL text; None when a use
    cannot be read statically (then no secret is given: only named ones are loaded)."""
    names: set[str] = set()
    for root in SECRETS_ROOT.finditer(text):
        named = _NAMED.match(text, root.end())
        name = named and next((g for g in named.groups() if g is not None), None)
        if name is None:
            return None
        names.add(name)
    return names


_NAMED = re.compile(r"""\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\])""")


def unrendered_secret_fields(
    kind: Any, config: Mapping[str, Any], rendered: Mapping[str, Any]
) -> dict[str, Any]:
    """`rendered` with every value that used a secret put back to its unrendered template
    (`"Bearer {{ secrets.token }}"`): what a step's stored input may show."""
    result = dict(rendered)
    for path, _text in secret_uses(kind, config):
        source: Any = config
        for key in path:
            source = source[key]
        _put(result, path, source)
    return result


def _put(target: dict, path: tuple, value: Any) -> None:
    node: Any = target
    for key in path[:-1]:
        child = node[key] if isinstance(node, dict | list) else None
        if isinstance(child, dict):
            child = dict(child)
        elif isinstance(child, list):
            child = list(child)
        else:  # rendered into another shape (a whole-string template): the source is safe
            node[key] = value
            return
        node[key] = child
        node = child
    if isinstance(node, dict) or (isinstance(node, list) and path[-1] < len(node)):
        node[path[-1]] = value


def encodings(plain: str) -> set[str]:
    """The plaintext and the common encodings of it a server or a function might echo."""
    raw = plain.encode()
    forms = {
        plain,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        binascii.hexlify(raw).decode(),
        binascii.hexlify(raw).decode().upper(),
        quote(plain, safe=""),
        quote_plus(plain),
    }
    forms |= {f.rstrip("=") for f in forms}
    return {f for f in forms if len(f) >= 4}
