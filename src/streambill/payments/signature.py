"""Verifying Stripe webhook signatures.

Stripe signs ``"<timestamp>.<raw body>"`` with HMAC-SHA256 under the endpoint's secret and sends
``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]``. We accept a request when some
``v1`` signature matches one of our secrets (two during a secret rotation), compared in constant
time, and its timestamp is within ``tolerance_s`` of our clock in *both* directions: a stale
timestamp means a replay, a future one a forged or skewed request (Stripe's own library only
checks the past). Everything else is refused with code ``invalid_signature``; the reason is for
the log, the HTTP answer stays generic.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from streambill.errors import StreambillError

SCHEME: Final = "v1"
DEFAULT_TOLERANCE_S: Final = 300
MAX_HEADER_CHARS: Final = 4096
MAX_SIGNATURES: Final = 8


class InvalidSignature(StreambillError):
    code = "invalid_signature"


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]


def parse_header(header: str | None) -> SignatureHeader:
    """The timestamp and the ``v1`` signatures of a ``Stripe-Signature`` header.

    >>> parse_header("t=1700000000,v1=ab12,v0=ff,v1=cd34")
    SignatureHeader(timestamp=1700000000, signatures=('ab12', 'cd34'))
    >>> parse_header("v1=ab12")
    Traceback (most recent call last):
    ...
    streambill.payments.signature.InvalidSignature: no timestamp in the signature header
    """
    if not header:
        raise InvalidSignature("no Stripe-Signature header")
    if len(header) > MAX_HEADER_CHARS:
        raise InvalidSignature("the signature header is too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise InvalidSignature("malformed signature header")
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise InvalidSignature("malformed timestamp in the signature header")
            timestamp = int(value)
        elif name == SCHEME and len(signatures) < MAX_SIGNATURES:
            signatures.append(value)
    if timestamp is None:
        raise InvalidSignature("no timestamp in the signature header")
    if not signatures:
        raise InvalidSignature(f"no {SCHEME} signature in the header")
    return SignatureHeader(timestamp, tuple(signatures))


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``payload`` at ``timestamp`` (for our own tests and tools).

    >>> sign(b'{"id": "evt_1"}', "whsec_test", 1700000000)[:16]
    'a0c091828640f0b6'
    """
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now_s: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check a webhook; return its timestamp, or raise :class:`InvalidSignature`.

    Every candidate is compared (no early exit on the first match), so the time taken does
    not tell which secret or which signature matched."""
    if not secrets or any(not s for s in secrets):
        raise InvalidSignature("no webhook secret is configured")
    parsed = parse_header(header)
    if abs(now_s - parsed.timestamp) > tolerance_s:
        raise InvalidSignature(
            f"timestamp {parsed.timestamp} is more than {tolerance_s} s from now ({now_s:.0f})"
        )
    matched = False
    for secret in secrets:
        expected = sign(payload, secret, parsed.timestamp).encode()
        for candidate in parsed.signatures:
            matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    if not matched:
        raise InvalidSignature("no signature matches the payload")
    return parsed.timestamp
