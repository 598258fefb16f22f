"""Per-key rate limits: a token bucket for each member key, steward key or peer.

Layer: node. One flooding key must not starve the others: each key gets ``rate`` requests a
second with bursts up to ``burst``; past that the API answers 429 with ``Retry-After``.
Buckets of idle keys are dropped so memory stays bounded however many keys appear.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0 if allowed, else the seconds to wait before retrying."""
        now = self.clock()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < cost:
            self.buckets[key] = (tokens, now)
            return (cost - tokens) / self.rate if self.rate > 0 else 60.0
        if len(self.buckets) >= self.max_keys and key not in self.buckets:
            self._prune(now)
        self.buckets[key] = (tokens - cost, now)
        return 0.0

    def _prune(self, now: float) -> None:
        # A bucket that has refilled completely carries no information: drop it.
        full_after = self.burst / self.rate if self.rate > 0 else float("inf")
        self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < full_after}
