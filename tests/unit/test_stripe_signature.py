"""Stripe webhook signatures: headers made by the official ``stripe`` library are accepted;
forged, tampered, expired and future-dated ones are refused."""

from __future__ import annotations

import random

import pytest
import stripe

from streambill.payments.signature import InvalidSignature, parse_header, verify

SECRET = "whsec_test_secret_1"
OLD_SECRET = "whsec_test_secret_0"
NOW = 1_795_000_000
PAYLOAD = b'{"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {}}}'


def stripe_header(payload: bytes, secret: str, timestamp: int) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp=timestamp
    )
    return header


def test_a_header_signed_by_the_stripe_library_is_accepted() -> None:
    header = stripe_header(PAYLOAD, SECRET, NOW - 10)
    assert verify(PAYLOAD, header, [SECRET], now_s=NOW) == NOW - 10
    # the library's own check agrees (with its clock near ours)
    stripe.WebhookSignature.verify_header(PAYLOAD, header, SECRET, tolerance=None)


def test_during_a_secret_rotation_both_secrets_verify() -> None:
    old = stripe_header(PAYLOAD, OLD_SECRET, NOW)
    assert verify(PAYLOAD, old, [SECRET, OLD_SECRET], now_s=NOW) == NOW
    with pytest.raises(InvalidSignature):
        verify(PAYLOAD, old, [SECRET], now_s=NOW)


def test_the_tolerance_holds_in_both_directions() -> None:
    for offset, ok in ((-300, True), (300, True), (-301, False), (301, False), (-86_400, False)):
        header = stripe_header(PAYLOAD, SECRET, NOW + offset)
        if ok:
            assert verify(PAYLOAD, header, [SECRET], now_s=NOW) == NOW + offset
        else:
            with pytest.raises(InvalidSignature, match="more than 300 s"):
                verify(PAYLOAD, header, [SECRET], now_s=NOW)


def test_a_matching_signature_among_several_is_enough() -> None:
    good = stripe_header(PAYLOAD, SECRET, NOW).split(",")[1]
    header = f"t={NOW},v1={'0' * 64},{good},v0=deadbeef"
    assert verify(PAYLOAD, header, [SECRET], now_s=NOW) == NOW


def _tamper(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    index = rng.randrange(len(data))
    data[index] = (data[index] + rng.randrange(1, 256)) % 256
    return bytes(data)


def test_forged_tampered_expired_and_future_requests_are_all_refused() -> None:
    """400 bad requests of four kinds, 100 each: none is accepted."""
    rng = random.Random(42)
    refused = 0
    for n in range(100):
        payload = PAYLOAD.replace(b"evt_1", f"evt_{n}".encode())
        t = NOW - rng.randrange(0, 300)
        cases = [
            (payload, stripe_header(payload, f"whsec_forged_{n}", t)),  # wrong secret
            (_tamper(rng, payload), stripe_header(payload, SECRET, t)),  # body changed
            (payload, stripe_header(payload, SECRET, NOW - 301 - rng.randrange(10**6))),
            (payload, stripe_header(payload, SECRET, NOW + 301 + rng.randrange(10**6))),
        ]
        for body, header in cases:
            with pytest.raises(InvalidSignature):
                verify(body, header, [SECRET], now_s=NOW)
            refused += 1
    assert refused == 400


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"v1={'a' * 64}",
        f"t=,v1={'a' * 64}",
        f"t=12x,v1={'a' * 64}",
        f"t={NOW},t={NOW},v1={'a' * 64}",
        f"t={NOW}",
        f"t={NOW},v0={'a' * 64}",
        "t=" + "9" * 5000,
        f"t={NOW},v1=ü",
    ],
)
def test_malformed_headers_are_refused_not_crashed_on(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify(PAYLOAD, header, [SECRET], now_s=NOW)


def test_without_a_configured_secret_nothing_verifies() -> None:
    header = stripe_header(PAYLOAD, "", NOW)
    for secrets in ([], [""]):
        with pytest.raises(InvalidSignature, match="no webhook secret"):
            verify(PAYLOAD, header, secrets, now_s=NOW)


def test_parse_header_keeps_only_v1_signatures() -> None:
    parsed = parse_header(f"t={NOW}, v1=aa ,v0=bb,v2=cc,v1=dd")
    assert parsed.timestamp == NOW and parsed.signatures == ("aa", "dd")
