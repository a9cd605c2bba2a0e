"""The control plane's public shapes: ``XCreate`` / ``XUpdate`` in, ``XPublic`` out.

Prices and auto top-up reuse the event models of ``billing.accounts.v1``
(:mod:`streambill.streams.events`), so the api accepts exactly what the worker will apply.
Amounts given by people are decimal strings; amounts emitted are integer micros.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, Generic, Literal, TypeVar
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from streambill.domain.money import MAX_AMOUNT_MICROS, MICROS_PER_UNIT, parse_decimal, round_micros
from streambill.streams.events import AmountText, AutoTopup, Currency, PriceItem

# Money a customer or reseller sets (auto top-up, alert levels) is refused at the edge
# unless the account could really be charged or compared in it: whole cents (every
# currency streambill bills in has two decimals), within the single top-up limits. The
# worker applies whatever reaches the accounts topic; these keep a bad value from getting
# there (an auto top-up of 20.005 once restarted the agent every 2 s for ever).
INVALID_MONEY: Final = "invalid_money_amount"
TOPUP_MIN_MICROS: Final = 5 * MICROS_PER_UNIT
TOPUP_MAX_MICROS: Final = 10_000 * MICROS_PER_UNIT
LEVEL_MAX_MICROS: Final = 1_000_000 * MICROS_PER_UNIT
CENT_MICROS: Final = MICROS_PER_UNIT // 100


def _money_error(field: str, problem: str) -> PydanticCustomError:
    context = {"field": field, "problem": problem}
    return PydanticCustomError(INVALID_MONEY, "{field}: {problem}", context)


def check_money(field: str, value: Decimal, low_micros: int, high_micros: int) -> Decimal:
    """``value`` as set by a person: whole cents within ``[low, high]``, else a 422 with
    ``invalid_money_amount``."""
    micros = round_micros(value)
    if value * MICROS_PER_UNIT != micros or micros % CENT_MICROS:
        raise _money_error(field, f"{value} is not a whole number of cents")
    if not low_micros <= micros <= high_micros:
        raise _money_error(
            field,
            f"{value} is outside {Decimal(low_micros).scaleb(-6):.2f}.."
            f"{Decimal(high_micros).scaleb(-6):.2f}",
        )
    return value


class AutoTopupSetting(AutoTopup):
    """Auto top-up as a customer or reseller sets it: the threshold in whole cents from 0 to
    10,000.00, the amount in whole cents within a single top-up's limits (5.00..10,000.00)
    when it is on."""

    @model_validator(mode="after")
    def _chargeable(self) -> AutoTopupSetting:
        check_money("auto_topup.threshold", self.threshold, 0, TOPUP_MAX_MICROS)
        if self.enabled or self.amount:
            check_money("auto_topup.amount", self.amount, TOPUP_MIN_MICROS, TOPUP_MAX_MICROS)
        return self


def _level(value: Decimal | None) -> Decimal | None:
    if value is not None:
        check_money("low_balance_threshold", value, 0, LEVEL_MAX_MICROS)
    return value


LowBalanceThreshold = Annotated[AmountText | None, AfterValidator(_level)]


T = TypeVar("T")
Status = Literal["active", "suspended", "closed"]
ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
# Ids in paths and filters: anything an account id may be (CONTRACT: 1..128 characters)
# except control characters, which no id holds and PostgreSQL text cannot store (NUL).
ANY_ID_PATTERN = r"^[^\x00-\x1f]+$"
ObjectId = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_ZONES = frozenset(available_timezones())


def _printable(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and no name or reason needs control characters.
    if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in value):
        raise ValueError("control characters are not allowed")
    return value


Text = Annotated[str, AfterValidator(_printable)]


def _colour(value: str | None) -> str | None:
    if value is not None and not _HEX_COLOUR.match(value):
        raise ValueError("colours are #rrggbb")
    return value


def _zone(value: str) -> str:
    if value not in _ZONES:
        raise ValueError(f"unknown time zone {value!r}")
    return value


Colour = Annotated[str | None, AfterValidator(_colour)]
TimeZone = Annotated[str, AfterValidator(_zone)]
# Host labels the platform keeps for itself: a reseller's white-label host must never take
# the name of one of the operator's own (app.<base>, api.<base>, ...).
RESERVED_SLUGS = frozenset(
    {
        "admin", "api", "app", "auth", "billing", "cdn", "dashboard", "docs", "ftp", "grafana",
        "help", "kafka", "login", "mail", "metrics", "platform", "portal", "reseller", "smtp",
        "static", "status", "streambill", "support", "www",
    }
)  # fmt: skip


def _slug(value: str) -> str:
    if value in RESERVED_SLUGS:
        raise ValueError(f"{value!r} is reserved for the platform")
    return value


Slug = Annotated[
    str,
    Field(min_length=2, max_length=63, pattern=r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])$"),
    AfterValidator(_slug),
]
Domain = Annotated[
    str, Field(max_length=253, pattern=r"^([a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63}$")
]
Iban = Annotated[str, Field(min_length=15, max_length=34, pattern=r"^[A-Z]{2}[0-9]{2}[A-Z0-9]+$")]
Bic = Annotated[str, Field(pattern=r"^[A-Z]{6}[A-Z0-9]{2}(?:[A-Z0-9]{3})?$")]
# A fraud score threshold: a decimal string in [0, 1] with at most 4 decimals (scores carry 4).
FRAUD_THRESHOLD_PATTERN = r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$"
FraudThreshold = Annotated[
    str,
    Field(
        pattern=FRAUD_THRESHOLD_PATTERN,
        description=(
            "Score above which a fraud_suspected alert goes out for this reseller's customers:"
            " a decimal string in [0, 1], at most 4 decimals; null: the platform default."
        ),
        examples=["0.85"],
    ),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Branding(_In):
    brand_name: Text | None = Field(default=None, max_length=128)
    logo_url: str | None = Field(default=None, max_length=512, pattern=r"^https?://")
    color_primary: Colour = None
    color_accent: Colour = None
    slug: Slug | None = None
    custom_domain: Domain | None = None


class Payout(_In):
    payout_holder: Text | None = Field(default=None, max_length=140)
    payout_iban: Iban | None = None
    payout_bic: Bic | None = None
    payout_email: EmailStr | None = None


class ResellerCreate(Branding, Payout):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Nordwind Telecom",
                    "currency": "EUR",
                    "slug": "nordwind",
                    "color_primary": "#0b5394",
                }
            ]
        },
    )

    id: ObjectId | None = Field(default=None, description="Defaults to a generated res_… id.")
    name: Text = Field(min_length=1, max_length=256)
    currency: Currency
    timezone: TimeZone = "Europe/Berlin"
    fraud_threshold: FraudThreshold | None = None


class ResellerUpdate(Branding, Payout):
    name: Text | None = Field(default=None, min_length=1, max_length=256)
    timezone: TimeZone | None = None
    status: Status | None = None
    fraud_threshold: FraudThreshold | None = Field(
        default=None, description="null resets it to the platform default (FRAUD_THRESHOLD)."
    )


class CustomerCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Praxis Dr. Weber",
                    "currency": "EUR",
                    "reseller_id": "res_1",
                    "prices": [{"meter": "call_minutes", "unit_price": "0.15"}],
                    "auto_topup": {"enabled": True, "threshold": "5.00", "amount": "20.00"},
                }
            ]
        },
    )

    id: ObjectId | None = Field(default=None, description="Defaults to a generated cus_… id.")
    name: Text = Field(min_length=1, max_length=256)
    currency: Currency
    prices: list[PriceItem] = Field(default_factory=list, max_length=256)
    auto_topup: AutoTopupSetting | None = None
    low_balance_threshold: LowBalanceThreshold = None
    reseller_id: ObjectId | None = Field(
        default=None, description="The owning reseller (a reseller's own key: itself)."
    )

    @field_validator("prices")
    @classmethod
    def _unique_meters(cls, prices: list[PriceItem]) -> list[PriceItem]:
        meters = [p.meter for p in prices]
        if len(set(meters)) != len(meters):
            raise ValueError("each meter may have one price")
        return prices


class CustomerUpdate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"auto_topup": {"enabled": True, "threshold": "10.00", "amount": "50.00"}},
                {"status": "suspended"},
            ]
        },
    )

    """Only the fields given change; ``auto_topup: null`` turns auto top-up off."""

    name: Text | None = Field(default=None, min_length=1, max_length=256)
    prices: list[PriceItem] | None = Field(default=None, max_length=256)
    auto_topup: AutoTopupSetting | None = None
    low_balance_threshold: LowBalanceThreshold = None
    status: Status | None = None

    _unique = field_validator("prices")(
        lambda cls, v: v if v is None else CustomerCreate._unique_meters(v)
    )


class PaymentMethodPublic(BaseModel):
    label: str = Field(
        description="How the customer recognises it (brand and last four digits); never more.",
        examples=["Visa •••• 4242", "SEPA •••• 3000"],
    )


class TenantPublic(BaseModel):
    id: str
    kind: Literal["reseller", "customer"]
    reseller_id: str | None = Field(description="The owning reseller of a customer.")
    name: str
    currency: str
    status: Status
    prices: list[PriceItem]
    auto_topup: AutoTopup | None
    low_balance_threshold: str | None
    timezone: str
    brand_name: str | None
    logo_url: str | None
    color_primary: str | None
    color_accent: str | None
    slug: str | None
    custom_domain: str | None
    payout_holder: str | None
    payout_iban: str | None
    payout_bic: str | None
    payout_email: str | None
    fraud_threshold: str | None = Field(
        default=None,
        description="A reseller's own fraud alert threshold (null: the platform default).",
    )
    payment_method: PaymentMethodPublic | None = Field(
        default=None, description="The payment method saved for auto top-up (customers)."
    )
    version: int
    created_at: datetime
    updated_at: datetime


KeyRole = Literal["admin", "reseller", "customer", "service"]


class ApiKeyCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"tenant_id": "cus_1", "role": "service", "name": "ivr-gateway"}]
        },
    )

    tenant_id: ObjectId | None = Field(default=None, description="None only for admin keys.")
    role: KeyRole
    name: Text = Field(default="", max_length=128)


class ApiKeyPublic(BaseModel):
    id: str
    role: KeyRole
    tenant_id: str | None
    name: str
    display_prefix: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The secret. Shown once; only its digest is stored.")


UserRole = Literal["admin", "reseller", "customer"]


class UserCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "owner@praxis-weber.de",
                    "password": "correct horse battery staple",
                    "role": "customer",
                    "tenant_id": "cus_1",
                    "name": "Dr. Weber",
                }
            ]
        },
    )

    email: EmailStr
    password: str = Field(min_length=12, max_length=256)
    role: UserRole
    tenant_id: ObjectId | None = None
    name: Text = Field(default="", max_length=256)


class UserPublic(BaseModel):
    id: str
    email: str
    role: UserRole
    tenant_id: str | None
    name: str
    disabled_at: datetime | None
    created_at: datetime


class LoginRequest(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"email": "owner@praxis-weber.de", "password": "correct horse battery staple"}
            ]
        },
    )

    email: Text = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=256)


class LoginResponse(BaseModel):
    token: str = Field(description="The session token; also set as an HttpOnly cookie.")
    expires_at: datetime
    user: UserPublic


def _signed_amount(value: object) -> Decimal:
    amount = parse_decimal(value, field="amount")
    micros = round_micros(amount)
    if micros == 0:
        raise ValueError("amount must not be 0")
    if abs(micros) > MAX_AMOUNT_MICROS:
        raise ValueError("amount out of range")
    return amount


class AdjustmentCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"amount": "10.00", "reason": "goodwill credit for a dropped call"}]
        },
    )

    amount: Annotated[str, AfterValidator(lambda v: str(_signed_amount(v)))] = Field(
        description="Signed decimal in major units: '10.00' credits, '-2.50' debits.",
        examples=["10.00", "-2.50"],
    )
    reason: Text = Field(min_length=1, max_length=500)


class AdjustmentPublic(BaseModel):
    id: str
    customer_id: str
    event_id: str
    idempotency_key: str
    amount: str
    amount_micros: int
    currency: str
    reason: str
    actor: str
    created_at: datetime


ReturnUrl = Annotated[str, Field(min_length=10, max_length=2048, pattern=r"^https?://[^\s]+$")]
TopupKind = Literal["auto", "checkout"]
TopupStatus = Literal[
    "pending", "unknown", "open", "processing", "requires_action", "succeeded", "failed", "expired"
]


class TopupCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"amount": "20.00", "save_payment_method": True}]},
    )

    amount: str = Field(
        pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$",
        description="Major units, whole cents, within the currency's top-up limits.",
        examples=["20.00"],
    )
    save_payment_method: bool = Field(
        default=False, description="Keep the card or mandate for auto top-up (off-session)."
    )
    success_url: ReturnUrl | None = Field(
        default=None, description="Where Stripe sends the customer after paying."
    )
    cancel_url: ReturnUrl | None = Field(
        default=None, description="Where Stripe sends the customer who cancels."
    )


class TopupPublic(BaseModel):
    id: str
    customer_id: str
    kind: TopupKind
    number: int
    status: TopupStatus
    amount: str
    amount_micros: int
    currency: str
    checkout_url: str | None = Field(
        description="The Stripe Checkout page of a Checkout top-up (while it is open)."
    )
    checkout_session_id: str | None
    expires_at: datetime | None = Field(description="When the Checkout Session expires.")
    payment_intent_id: str | None
    failure_code: str | None
    action_url: str | None = Field(
        description="An auto top-up that needs the customer: the link that pays it in Checkout."
    )
    created_at: datetime
    updated_at: datetime
    credited_at: datetime | None


class CheckoutLink(BaseModel):
    checkout_url: str
    checkout_session_id: str
    expires_at: datetime | None


class PaymentMethodSetup(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"success_url": "https://app.example.com/billing"}]},
    )

    success_url: ReturnUrl | None = None
    cancel_url: ReturnUrl | None = None


class PaymentMethodSet(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"payment_method_id": "pm_1PgT2sLkdIwHu7ix"}]},
    )

    payment_method_id: str = Field(
        min_length=3,
        max_length=255,
        pattern=r"^[A-Za-z0-9_]+$",
        description="A Stripe PaymentMethod (from a SetupIntent confirmed with Stripe.js).",
    )


class FraudLabelCreate(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"fraud": True, "event_id": "call-8812-part-1", "note": "takeover, see ticket 91"},
                {"fraud": False, "note": "checked with the customer: genuine night shift"},
            ]
        },
    )

    fraud: StrictBool = Field(description="true: fraud; false: an all-clear.")
    event_id: Text | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The usage or payment event the label is about; null: the customer.",
    )
    note: Text | None = Field(default=None, max_length=500)


class FraudLabelPublic(BaseModel):
    id: str
    customer_id: str
    fraud: bool
    event_id: str | None
    note: str | None
    created_by: str
    created_at: datetime


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="Pass as cursor to read the next page; null on the last."
    )
