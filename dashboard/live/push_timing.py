"""The server's own share of the push path, for bench/push.py: off unless the web process
runs with SIGNALBOX_PUSH_TIMING=1.

Run hints carry the wall-clock time they were sent, right after their commit
(workflows/live/notify.py, "at"). When timing is on, each socket keeps the commit time of the
oldest hint it has not been served yet, and the Hub logs one line per frame it serves
(logger "signalbox.live.timing"): how many pages, how long the render and the writes took,
and the commit -> last socket write time of the pages served. A client's own delay is not
in these figures; comparing them with the client's tells the two apart.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import deque

ENABLED = os.environ.get("SIGNALBOX_PUSH_TIMING") == "1"
PREFIX = "push-frame "

log = logging.getLogger("signalbox.live.timing")

# Garbage collections of this process, (start, end, generation), monotonic, the latest few:
# a frame's line says how much of its time went to them.
_collections: deque[tuple[float, float, int]] = deque(maxlen=256)
_collecting: list[float] = []


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _collecting[:] = [time.monotonic()]
    elif _collecting:
        _collections.append((_collecting[0], time.monotonic(), info.get("generation", -1)))


if ENABLED:
    log.setLevel(logging.INFO)
    gc.callbacks.append(_on_gc)


def frame_served(
    *,
    key: str,
    pages: int,
    committed: list[float],
    hinted: list[float],
    started: float,
    rendered: float,
    computing: float | None = None,
) -> None:
    """One frame served: `started` and `rendered` are monotonic (render began, render
    done), `committed` the commit times (wall clock) of the hints behind it and `hinted`
    when this process read them (wall clock)."""
    written = time.monotonic()
    now = time.time()
    lags = [(now - at) * 1000 for at in committed]
    oldest = written - max(lags, default=0) / 1000
    # Collections that ran between the oldest commit and the last write.
    gc_ms = sum(
        min(end, written) - max(begin, oldest) for begin, end, _ in _collections if end > oldest
    )
    hops = [(seen - at) * 1000 for at, seen in zip(committed, hinted, strict=True)]
    waited = [(written - (now - seen)) for seen in hinted]
    log.info(
        "%s%s",
        PREFIX,
        json.dumps(
            {
                "key": key,
                "pages": pages,
                "render_ms": round((rendered - started) * 1000, 2),
                "write_ms": round((written - rendered) * 1000, 2),
                "commit_to_written_ms": round(max(lags), 2) if lags else None,
                "commit_to_first_written_ms": round(min(lags), 2) if lags else None,
                # commit -> this process read the hint (the hint's hop through Redis)
                "hint_ms": round(max(hops), 2) if hops else None,
                # hint read -> render began (the loop's queue and the coalescing)
                "queued_ms": round((started - min(waited)) * 1000, 2) if waited else None,
                "gc_ms": round(gc_ms * 1000, 2),
                # render began -> its computation began (the hop to the render thread)
                "to_thread_ms": round((computing - started) * 1000, 2)
                if computing and computing >= started
                else None,
            }
        ),
    )
