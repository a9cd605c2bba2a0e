"""Per-credential rate limits: token buckets in the api process.

Each API key or session gets ``rate`` requests per second with bursts up to ``burst``; a
request beyond that answers 429 with ``Retry-After`` (whole seconds, at least 1). Buckets
live in this process: behind a load balancer with N replicas a key gets up to N times the
rate, which is the usual trade for not putting a shared store on every request's path.
The table of buckets is bounded (least recently used go first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from streambill.errors import RateLimited

MAX_BUCKETS: Final = 100_000


class RateLimiter:
    """Token buckets by key.

    >>> now = [0.0]
    >>> limiter = RateLimiter(rate_per_s=2, burst=2, monotonic=lambda: now[0])
    >>> limiter.take("k"), limiter.take("k")
    (0.0, 0.0)
    >>> limiter.take("k")  # empty: half a second until the next token
    0.5
    >>> now[0] = 0.5
    >>> limiter.take("k")
    0.0
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._rate = rate_per_s
        self._burst = burst
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 when allowed, else the seconds until it would be."""
        now = self._monotonic()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            self._buckets.move_to_end(key)
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self._rate

    def check(self, key: str, cost: float = 1.0) -> None:
        """Raise :class:`RateLimited` when ``key`` is over its limit."""
        wait_s = self.take(key, cost)
        if wait_s > 0:
            raise RateLimited(
                f"rate limit of {self._rate:g} requests/s exceeded",
                retry_after_s=max(1, math.ceil(wait_s)),
            )
