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


class LoginGuard:
    """Who may try a password now, decided before any hashing.

    A password check costs ~190 ms of CPU (argon2id), so a stream of logins is a way to
    stall the api. Three token buckets, each answering 429 with ``Retry-After`` when empty:
    per client address (``per_address_per_min``: a storm from one place, whatever e-mails
    it tries), per e-mail (``per_email_per_min``, across addresses: guessing one account's
    password from many), and for the whole process (``overall_per_s``: what the hashing
    pool can take without queueing). The overall bucket is taken last, so a client held by
    its own limits does not spend the others' share. Checks that pass still wait for a slot
    in the hashing pool (:class:`~streambill.control.security.PasswordPool`), which refuses
    with 429 too when it is full.
    """

    def __init__(
        self,
        *,
        per_address_per_min: float,
        per_email_per_min: float,
        overall_per_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        clock = {"monotonic": monotonic}
        self.address = RateLimiter(per_address_per_min / 60.0, per_address_per_min, **clock)
        self.email = RateLimiter(per_email_per_min / 60.0, per_email_per_min, **clock)
        self.overall = RateLimiter(overall_per_s, max(1.0, overall_per_s * 2), **clock)

    def check(self, address: str, email: str) -> None:
        """Raise :class:`RateLimited` when this attempt may not be made now."""
        self.address.check(address)
        self.email.check(email.strip().lower())
        self.overall.check("*")
