"""One root error type with stable codes.

Codes are part of the public contract: they appear in HTTP error bodies and in dead-letter
records. ``api/errors.py`` maps them to HTTP status in one table.
"""

from __future__ import annotations


class StreambillError(Exception):
    """Root of every error the project raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class InvalidEvent(StreambillError):
    """An input that can never be applied (wrong shape, bad value)."""

    code = "invalid_event"


class InvalidJson(InvalidEvent):
    code = "invalid_json"


class UnknownMeter(InvalidEvent):
    code = "unknown_meter"


class UnknownCustomer(StreambillError):
    code = "unknown_customer"


class CurrencyMismatch(InvalidEvent):
    code = "currency_mismatch"


class NotFound(StreambillError):
    code = "not_found"


class Unauthorized(StreambillError):
    code = "unauthorized"


class Forbidden(StreambillError):
    """The principal sees the object but may not do this to it."""

    code = "forbidden"


class Conflict(StreambillError):
    """The request contradicts the current state (a taken id, a closed account)."""

    code = "conflict"


class RateLimited(StreambillError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BrokerUnavailable(StreambillError):
    code = "broker_unavailable"


class InvariantViolation(StreambillError):
    """A broken invariant: a bug, never bad input. Always raised, never stripped by -O."""

    code = "invariant_violation"


def check(condition: bool, message: str) -> None:
    """Raise :class:`InvariantViolation` unless ``condition`` holds (``assert`` survives -O).

    >>> check(1 + 1 == 2, "arithmetic")
    >>> check(False, "seq gap")
    Traceback (most recent call last):
    ...
    streambill.errors.InvariantViolation: seq gap
    """
    if not condition:
        raise InvariantViolation(message)
