"""What an event says about where it came from: the extensions Signalbox reads and writes to
follow a conversation (correlation and causation ids, W3C `traceparent`), the workflow
whose run emitted it (`sbworkflow`) and how far down a causation chain it is (`sbdepth`).

Read by ingest (filling in the conversation), by the run services (continuing it), by the
live pushes and the event store's visibility (whose event is it): so it sits here, in the
events context, beneath all of them.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workflows.events.models import Event

log = logging.getLogger("signalbox.producers")

RUN_SOURCE = "/signalbox/runs"
RUN_TYPE_PREFIX = "signalbox.run."
# CloudEvents extension names: 1-20 lowercase letters or digits.
WORKFLOW_EXTENSION = "sbworkflow"
DEPTH_EXTENSION = "sbdepth"
RUN_EXTENSION = "sbrun"
TRACEPARENT = "traceparent"
DEFAULT_MAX_CAUSATION_DEPTH = 8

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex. Versions above 00 may
# append fields; version ff is forbidden; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def valid_traceparent(value: object) -> bool:
    if not isinstance(value, str):
        return False
    found = _TRACEPARENT.match(value)
    if not found:
        return False
    version, trace_id, parent_id, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return False
    return trace_id != "0" * 32 and parent_id != "0" * 16


def correlation_extensions(extensions: dict[str, Any], *, event_id: str) -> dict[str, Any]:
    """Extensions with `correlationid` and `causationid` filled in when absent (an outside
    event starts its own conversation and caused itself), and `traceparent` kept only when
    it is well formed: W3C Trace Context says a receiver that cannot parse it starts a
    new trace rather than propagating garbage."""
    out = dict(extensions)
    out["correlationid"] = str(out.get("correlationid") or event_id)
    out["causationid"] = str(out.get("causationid") or event_id)
    if TRACEPARENT in out and not valid_traceparent(out[TRACEPARENT]):
        log.warning("event %s: dropping malformed traceparent %r", event_id, out[TRACEPARENT])
        del out[TRACEPARENT]
    return out


def emitting_workflow(event: Event) -> str | None:
    """The slug of the workflow whose run produced `event`, as the event says: the
    `sbworkflow` extension of an event on the `run` channel (only Signalbox itself ingests
    on that channel, so an outside producer cannot claim a workflow's events). None for
    everything else, and for events emitted by steps before they carried the extension."""
    if event.channel != "run":
        return None
    slug = (event.extensions or {}).get(WORKFLOW_EXTENSION)
    return slug if isinstance(slug, str) and slug else None


def causation_depth(event: Event) -> int:
    try:
        return max(0, int((event.extensions or {}).get(DEPTH_EXTENSION, 0)))
    except (TypeError, ValueError):
        return 0
