"""One throughput window for every meter: counts (bytes, patches, requests, ...) over a timed span.

Training logs bytes, patches and rows per second over the steps since its last row, with evaluation
time taken out; lm-eval scoring says requests and bytes per second of a request type. Both are a
`Window`.
"""

from __future__ import annotations

import time


class Window:
    """Counts accumulated since a start time, and their rates.

    Args:
      now: the start (`time.perf_counter()` seconds; default: now).
    """

    def __init__(self, now: float | None = None):
        self.start = time.perf_counter() if now is None else now
        self.counts: dict[str, float] = {}

    def add(self, **counts: float) -> None:
        """Adds to the named counts."""
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def get(self, key: str) -> float:
        return self.counts.get(key, 0)

    def pause(self, seconds: float) -> None:
        """Takes `seconds` out of the window (time spent on other work inside it); the counts stay."""
        self.start += seconds

    def seconds(self, now: float | None = None) -> float:
        """Seconds since the start (at least 1e-9)."""
        return max((time.perf_counter() if now is None else now) - self.start, 1e-9)

    def rate(self, key: str, now: float | None = None) -> float:
        """Count `key` per second."""
        return self.get(key) / self.seconds(now)

    def restart(self, now: float | None = None) -> None:
        """Empties the counts and starts again at `now`."""
        self.start = time.perf_counter() if now is None else now
        self.counts = {}

    def line(self, what: str) -> str:
        """`what: R requests, B bytes in S s (r requests/s, b bytes/s)`."""
        seconds = self.seconds()
        requests, num_bytes = int(self.get("requests")), int(self.get("bytes"))
        return (
            f"{what}: {requests} requests, {num_bytes:,} bytes in {seconds:.1f}s "
            f"({requests / seconds:.2f} requests/s, {num_bytes / seconds:,.0f} bytes/s)"
        )
