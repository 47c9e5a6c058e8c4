"""A measured phase (events, requests, latencies) and the percentile the benchmarks use."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Result:
    name: str
    events: int  # accepted events (requests x events per request)
    requests: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    errors: int = 0
    note: str = ""
    # Percentiles a load generator reported itself (wrk), when there are no latencies.
    reported: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return self.reported.get("p50", percentile(self.latencies_ms, 0.50))

    @property
    def p99(self) -> float:
        return self.reported.get("p99", percentile(self.latencies_ms, 0.99))

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("latencies_ms")
        return {
            **data,
            "events_per_s": round(self.rate, 1),
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
        }
