"""One pydantic model per topic of CONTRACT section 4, and decoders with stable error codes.

Amounts given by people are decimal strings in major units; amounts the system emits are
integer micros. Unknown fields are ignored. Decoders raise :class:`~streambill.errors.InvalidJson`
or :class:`~streambill.errors.InvalidEvent`; the agent turns those into dead letters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from streambill.domain.money import MAX_QUANTITY, parse_decimal, to_micros
from streambill.errors import InvalidEvent, InvalidJson, StreambillError

MAX_PAYLOAD_BYTES = 64 * 1024
M = TypeVar("M", bound=BaseModel)
Currency = Literal["EUR", "USD", "GBP"]


def _decimal(field: str) -> BeforeValidator:
    return BeforeValidator(lambda v: parse_decimal(v, field=field))


DecimalText = PlainSerializer(lambda d: str(d), return_type=str)
Quantity = Annotated[Decimal, _decimal("quantity"), DecimalText]
Price = Annotated[Decimal, _decimal("unit_price"), DecimalText]
AmountText = Annotated[Decimal, _decimal("amount"), DecimalText]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)


class PriceItem(_Event):
    meter: str = Field(min_length=1, max_length=64)
    unit_price: Price

    @field_validator("unit_price")
    @classmethod
    def _non_negative(cls, v: Decimal) -> Decimal:
        if v < 0:
            raise ValueError("unit_price must be >= 0")
        return v


class AutoTopup(_Event):
    enabled: bool = False
    threshold: AmountText = Decimal(0)
    amount: AmountText = Decimal(0)

    @model_validator(mode="after")
    def _amounts(self) -> AutoTopup:
        if self.threshold < 0 or self.amount < 0:
            raise ValueError("auto_topup threshold and amount must be >= 0")
        if self.enabled and self.amount <= 0:
            raise ValueError("auto_topup amount must be > 0 when enabled")
        return self


class AccountEvent(_Event):
    """``billing.accounts.v1``, key ``account_id``, compacted; written by the control plane.

    ``low_balance_threshold`` (an extension of the contract) overrides the auto top-up
    threshold as the level below which a ``low_balance`` alert fires. ``version`` (also an
    extension, set by the control plane) counts an account's changes: the outbox delivers at
    least once, so after a crash a change may arrive again after newer ones, and a version
    below the one applied is ignored. Accounts written without it are applied in order.
    """

    account_id: str = Field(min_length=1, max_length=128)
    kind: Literal["customer", "reseller"]
    parent_id: str | None = Field(default=None, max_length=128)
    name: str = Field(default="", max_length=256)
    currency: Currency
    status: Literal["active", "suspended", "closed"] = "active"
    prices: list[PriceItem] = Field(default_factory=list, max_length=256)
    auto_topup: AutoTopup | None = None
    low_balance_threshold: AmountText | None = None
    version: int | None = Field(default=None, ge=1)
    updated_at: AwareDatetime

    @cached_property
    def price_map(self) -> dict[str, Decimal]:
        """Meter -> unit price, computed once per account version (accounts are frozen)."""
        return {p.meter: p.unit_price for p in self.prices}

    @cached_property
    def low_threshold_micros(self) -> int:
        """The level below which the balance counts as low (0: only depletion alerts)."""
        if self.low_balance_threshold is not None:
            return to_micros(self.low_balance_threshold, field="low_balance_threshold")
        if self.auto_topup is not None and self.auto_topup.enabled:
            return to_micros(self.auto_topup.threshold, field="auto_topup.threshold")
        return 0


class UsageEvent(_Event):
    """``billing.usage.v1``, key ``customer_id``; written by services."""

    event_id: str = Field(min_length=1, max_length=128)
    customer_id: str = Field(min_length=1, max_length=128)
    meter: str = Field(min_length=1, max_length=64)
    quantity: Quantity
    occurred_at: AwareDatetime
    attributes: dict[str, Any] = Field(default_factory=dict)

    @property
    def occurred_text(self) -> str:
        return self.occurred_at.isoformat()

    @field_validator("quantity")
    @classmethod
    def _quantity(cls, v: Decimal) -> Decimal:
        if v < 0:
            raise ValueError("quantity must be >= 0")
        if v > MAX_QUANTITY:
            raise ValueError("quantity too large")
        return v


PaymentKind = Literal[
    "topup", "refund", "chargeback", "adjustment", "refund_reversal", "chargeback_reversal"
]


class PaymentEvent(_Event):
    """``billing.payments.v1``, key ``customer_id``.

    ``topup`` credits, ``refund`` and ``chargeback`` debit (their amount is positive),
    ``adjustment`` adds its signed amount. ``refund_reversal`` (a refund that failed or was
    canceled after it was debited) and ``chargeback_reversal`` (a dispute's funds
    reinstated) credit back what the refund or chargeback took.
    """

    event_id: str = Field(min_length=1, max_length=128)
    customer_id: str = Field(min_length=1, max_length=128)
    kind: PaymentKind
    amount: AmountText
    currency: Currency
    occurred_at: AwareDatetime
    provider: str | None = Field(default=None, max_length=64)
    provider_ref: str | None = Field(default=None, max_length=256)

    @property
    def occurred_text(self) -> str:
        return self.occurred_at.isoformat()

    @model_validator(mode="after")
    def _sign(self) -> PaymentEvent:
        if self.kind == "adjustment":
            if self.amount == 0:
                raise ValueError("adjustment amount must not be 0")
        elif self.amount <= 0:
            raise ValueError(f"{self.kind} amount must be > 0")
        return self

    def signed_micros(self) -> int:
        """The effect on the balance: credit positive, debit negative."""
        micros = to_micros(self.amount)
        return -micros if self.kind in ("refund", "chargeback") else micros


class LedgerEntry(_Event):
    """``billing.ledger.v1``, key ``customer_id``: one entry per applied event."""

    entry_id: str
    source_event_id: str
    source_topic: str
    customer_id: str
    reseller_id: str | None
    kind: str
    meter: str | None = None
    quantity: str | None = None
    amount_micros: int
    balance_micros: int
    currency: Currency
    seq: int
    occurred_at: datetime
    applied_at: datetime


class Alert(_Event):
    """``billing.alerts.v1``, key ``customer_id``."""

    alert_id: str
    customer_id: str
    reseller_id: str | None
    kind: str
    details: dict[str, Any]
    created_at: datetime


class DeadLetter(_Event):
    """``billing.deadletter.v1``: every input that cannot be applied, with the reason."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    error_code: str
    reason: str
    failed_at: datetime


def _first_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode_object(raw: bytes | str) -> dict[str, Any]:
    """Bytes -> a JSON object, or :class:`InvalidJson`.

    >>> decode_object(b'{"a": 1}')
    {'a': 1}
    >>> decode_object(b'{"a": ')
    Traceback (most recent call last):
    ...
    streambill.errors.InvalidJson: payload is not valid JSON
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidJson("payload is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidEvent(f"payload must be a JSON object, got {type(value).__name__}")
    return value


def _validate(model: type[M], obj: dict[str, Any]) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent(_first_error(exc)) from None


def usage_from_obj(obj: dict[str, Any]) -> UsageEvent:
    return _validate(UsageEvent, obj)


def payment_from_obj(obj: dict[str, Any]) -> PaymentEvent:
    return _validate(PaymentEvent, obj)


def decode_usage(raw: bytes | str) -> UsageEvent:
    return usage_from_obj(decode_object(raw))


def decode_payment(raw: bytes | str) -> PaymentEvent:
    return payment_from_obj(decode_object(raw))


def decode_account(raw: bytes | str) -> AccountEvent:
    return _validate(AccountEvent, decode_object(raw))


# -- the hot path -----------------------------------------------------------------------------
# The pydantic models above are the contract. Validating each usage event with them costs
# ~25 us, most of the worker's per-event compute, so the balances engine decodes through the
# functions below: they hand-check the common, well-formed shape and build a plain object
# with exactly the values the model would hold. On any doubt (a missing or odd field, a
# timestamp in another ISO form) they return the model's own result, so every accept/reject
# decision, every error code and every message is the model's.
# tests/unit/test_engine_balances.py compares both paths on valid and invalid inputs.

# The ISO 8601 forms pydantic and datetime.fromisoformat read alike; others go to pydantic.
_ISO_AWARE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
_PAYMENT_KINDS = frozenset(
    ("topup", "refund", "chargeback", "adjustment", "refund_reversal", "chargeback_reversal")
)
CURRENCIES = frozenset(("EUR", "USD", "GBP"))


class FastUsage(NamedTuple):
    """What the engine reads of a valid :class:`UsageEvent`, without the model."""

    event_id: str
    customer_id: str
    meter: str
    quantity: Decimal
    occurred_at: datetime
    occurred_text: str  # occurred_at.isoformat()


class FastPayment(NamedTuple):
    """What the engine reads of a valid :class:`PaymentEvent`, without the model."""

    event_id: str
    customer_id: str
    kind: str
    amount: Decimal
    currency: str
    occurred_at: datetime
    occurred_text: str  # occurred_at.isoformat()

    def signed_micros(self) -> int:
        micros = to_micros(self.amount)
        return -micros if self.kind in ("refund", "chargeback") else micros


def _short_str(value: object, max_len: int) -> bool:
    return type(value) is str and 0 < len(value) <= max_len


def iso_aware(value: object) -> datetime | None:
    """An aware datetime for the ISO forms pydantic reads alike; None: let the model decide."""
    if type(value) is not str or _ISO_AWARE.fullmatch(value) is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else None


def iso_text(text: str, value: datetime) -> str:
    """``value.isoformat()`` for a ``text`` that :func:`iso_aware` read as ``value``: the text
    itself when it is in that form already (formatting an aware datetime costs ~1.5 us, a
    noticeable share of an event's compute).

    >>> t = "2026-11-25T10:00:00.123456+01:00"
    >>> iso_text(t, datetime.fromisoformat(t)) is t
    True
    >>> for t in ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00.5+00:00",
    ...           "2026-11-25T10:00:00.000000+00:00", "2026-11-25T10:00:00-00:00"):
    ...     print(iso_text(t, datetime.fromisoformat(t)))
    2026-11-25T10:00:00+00:00
    2026-11-25T10:00:00.500000+00:00
    2026-11-25T10:00:00+00:00
    2026-11-25T10:00:00+00:00
    """
    n = len(text)  # the regex fixed the form: only the fraction and the zone vary
    if (n == 25 or (n == 32 and text[19:26] != ".000000")) and (
        text[-6] == "+" or (text[-6] == "-" and text[-5:] != "00:00")
    ):
        return text
    return value.isoformat()


def _decimal_or_none(value: object, field: str) -> Decimal | None:
    try:
        return parse_decimal(value, field=field)
    except StreambillError:
        return None


def fast_usage(obj: dict[str, Any]) -> FastUsage | UsageEvent:
    """``usage_from_obj`` for the hot path: a :class:`FastUsage`, or the model's result."""
    event_id = obj.get("event_id")
    customer_id = obj.get("customer_id")
    meter = obj.get("meter")
    attributes = obj.get("attributes", _NO_ATTRIBUTES)
    if (
        _short_str(event_id, 128)
        and _short_str(customer_id, 128)
        and _short_str(meter, 64)
        and (attributes is _NO_ATTRIBUTES or type(attributes) is dict)
    ):
        quantity = _decimal_or_none(obj.get("quantity"), "quantity")
        occurred = obj.get("occurred_at")
        occurred_at = iso_aware(occurred)
        if quantity is not None and occurred_at is not None and 0 <= quantity <= MAX_QUANTITY:
            text = iso_text(occurred, occurred_at)  # type: ignore[arg-type]
            return FastUsage(event_id, customer_id, meter, quantity, occurred_at, text)  # type: ignore[arg-type]
    return usage_from_obj(obj)


def fast_payment(obj: dict[str, Any]) -> FastPayment | PaymentEvent:
    """``payment_from_obj`` for the hot path: a :class:`FastPayment`, or the model's result."""
    event_id = obj.get("event_id")
    customer_id = obj.get("customer_id")
    kind = obj.get("kind")
    currency = obj.get("currency")
    provider = obj.get("provider")
    provider_ref = obj.get("provider_ref")
    if (
        _short_str(event_id, 128)
        and _short_str(customer_id, 128)
        and type(kind) is str
        and kind in _PAYMENT_KINDS
        and type(currency) is str
        and currency in CURRENCIES
        and (provider is None or (type(provider) is str and len(provider) <= 64))
        and (provider_ref is None or (type(provider_ref) is str and len(provider_ref) <= 256))
    ):
        amount = _decimal_or_none(obj.get("amount"), "amount")
        occurred = obj.get("occurred_at")
        occurred_at = iso_aware(occurred)
        if (
            amount is not None
            and occurred_at is not None
            and (amount != 0 if kind == "adjustment" else amount > 0)
        ):
            text = iso_text(occurred, occurred_at)  # type: ignore[arg-type]
            return FastPayment(event_id, customer_id, kind, amount, currency, occurred_at, text)  # type: ignore[arg-type]
    return payment_from_obj(obj)


_NO_ATTRIBUTES: Any = object()


@dataclass(frozen=True, slots=True)
class AccountView:
    """What the engine reads of an :class:`AccountEvent`: a few hundred bytes instead of a
    few kilobytes per account (100k accounts are held in every worker)."""

    account_id: str
    kind: str
    parent_id: str | None
    currency: str
    status: str
    price_map: dict[str, Decimal]
    low_threshold_micros: int
    # The auto top-up threshold when auto top-up is on, else None.
    autotopup_threshold_micros: int | None = None


_PRICE_MAPS: dict[tuple[tuple[str, str], ...], dict[str, Decimal]] = {}


def account_view(account: AccountEvent) -> AccountView:
    """The compact view; identical price lists share one (read-only) dict."""
    prices = account.price_map
    shape = tuple((meter, str(price)) for meter, price in prices.items())
    shared = _PRICE_MAPS.get(shape)
    if shared is None:
        if len(_PRICE_MAPS) >= 100_000:
            _PRICE_MAPS.clear()
        shared = _PRICE_MAPS[shape] = prices
    return AccountView(
        account.account_id,
        account.kind,
        account.parent_id,
        account.currency,
        account.status,
        shared,
        account.low_threshold_micros,
        (
            to_micros(account.auto_topup.threshold, field="auto_topup.threshold")
            if account.auto_topup is not None and account.auto_topup.enabled
            else None
        ),
    )
