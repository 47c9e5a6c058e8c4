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

import json
import logging
import os
import time

ENABLED = os.environ.get("SIGNALBOX_PUSH_TIMING") == "1"
PREFIX = "push-frame "

log = logging.getLogger("signalbox.live.timing")
if ENABLED:
    log.setLevel(logging.INFO)


def frame_served(
    *, key: str, pages: int, committed: list[float], started: float, rendered: float
) -> None:
    """One frame served: `started` and `rendered` are monotonic (render began, render
    done), `committed` the commit times (wall clock) of the hints behind it."""
    written = time.monotonic()
    now = time.time()
    lags = [(now - at) * 1000 for at in committed]
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
            }
        ),
    )
