"""Header values of the CloudEvents HTTP binding's binary mode (spec v1.0.2, 3.1.3.2).

A `ce-*` header value is printable US-ASCII. A receiver first undoes RFC 7230 quoted
strings (older producers quoted values holding spaces or double quotes), then performs a
single round of percent-decoding of UTF-8: lower-case hex is accepted, byte sequences that
are not valid UTF-8 (an overlong `%C0%A0`, a lone `%FF`) are refused, and `+` stays `+`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

PREFIX = "ce-"
# RFC 7230 3.2.6: "..." with backslash escapes inside; anything else passes through as is.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPED = re.compile(r"\\(.)")
# What an HTTP header value may hold once the server has trimmed it: space, tab, VCHAR.
_PRINTABLE = re.compile(r"^[\t\x20-\x7e]*$")
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class BadHeaderValue(ValueError):
    pass


def decode_value(raw: str) -> str:
    """The attribute value carried by one ce-* header value (given as the server decoded
    it, latin-1). Raises BadHeaderValue saying what is wrong."""
    if not _PRINTABLE.match(raw):
        raise BadHeaderValue(
            "HTTP header values are printable US-ASCII; percent-encode other characters "
            "as UTF-8 (é is %C3%A9)"
        )
    if '"' in raw:
        if '"' in _QUOTED.sub("", raw):
            raise BadHeaderValue("has an unterminated double-quoted string")
        raw = _QUOTED.sub(lambda m: _ESCAPED.sub(r"\1", m.group(1)), raw)
    if "%" not in raw:
        return raw
    if _BARE_PERCENT.search(raw):
        raise BadHeaderValue("a % must start a percent-encoded byte such as %25")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadHeaderValue("percent-encoded bytes are not valid UTF-8") from exc


def attribute_headers(headers) -> dict[str, str]:
    """{attribute name: raw header value} for the ce-* headers; names are lower-cased
    (HTTP header names are case-insensitive, CloudEvents attribute names lower-case)."""
    return {
        name.lower()[len(PREFIX) :]: value
        for name, value in headers.items()
        if len(name) > len(PREFIX) and name[: len(PREFIX)].lower() == PREFIX
    }
