"""Stripe, as the few calls streambill makes, through the official ``stripe`` library.

Every call is async (``httpx`` under the library), answers plain dicts, and has one timeout
(``STREAMBILL_STRIPE_TIMEOUT_S``). The library's own network retries are off: a retry is a
decision that needs our records first (was the attempt recorded, did the first call take
effect?), so it is made by the caller. Errors come out as three kinds:

- :class:`StripeUnreachable`: the call may or may not have taken effect (timeout, connection
  lost, a 5xx). Look the object up before anything is retried.
- :class:`StripeDeclined`: Stripe refused the payment (``card_declined``,
  ``authentication_required``, ...); ``payment_intent`` is the failed intent when Stripe
  made one.
- :class:`StripeRejected`: any other refusal (bad request, auth, not found): a bug or a
  configuration problem, never retried blindly.

``STREAMBILL_STRIPE_API_BASE`` points the client at a stand-in (localstripe in the tests).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, cast

import stripe

from streambill.settings import Settings

log = logging.getLogger(__name__)

LIST_PAGE: Final = 100


class StripeProblem(Exception):
    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class StripeUnreachable(StripeProblem):
    """The call may have taken effect: resolve by lookup before retrying."""


class StripeDeclined(StripeProblem):
    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        status: int | None,
        payment_intent: dict[str, Any] | None,
        charge_id: str | None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.payment_intent = payment_intent
        self.charge_id = charge_id


class StripeRejected(StripeProblem):
    pass


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _translate(exc: stripe.StripeError) -> StripeProblem:
    status = exc.http_status
    if isinstance(exc, stripe.APIConnectionError) or status is None or status >= 500:
        return StripeUnreachable(str(exc) or type(exc).__name__, code=exc.code, status=status)
    if isinstance(exc, stripe.CardError) or status == 402:
        body = exc.json_body or {}
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        intent = error.get("payment_intent")
        charge = error.get("charge")
        return StripeDeclined(
            error.get("message") or str(exc),
            code=error.get("decline_code") or error.get("code") or exc.code or "card_declined",
            status=status,
            payment_intent=intent if isinstance(intent, dict) else None,
            charge_id=charge if isinstance(charge, str) else None,
        )
    if isinstance(exc, stripe.IdempotencyError):  # the key was used with other parameters
        return StripeRejected(str(exc), code="idempotency_error", status=status)
    return StripeRejected(str(exc), code=exc.code, status=status)


# The API version every request names, so the shapes of the objects and of the events made
# for them cannot change under the code (the library's own default moves with its
# releases). docs/payments.md says what this version implies for refunds and disputes.
# Webhook endpoints must be created with the same version (Stripe renders an event in the
# endpoint's version).
STRIPE_API_VERSION: Final = "2026-10-28.endive"


@dataclass(frozen=True)
class StripeConfig:
    api_key: str
    api_base: str | None
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeConfig | None:
        if not settings.stripe_api_key:
            return None
        return cls(settings.stripe_api_key, settings.stripe_api_base, settings.stripe_timeout_s)


class StripeGateway:
    """The Stripe calls of top-ups, auto top-ups and reconciliation."""

    def __init__(self, config: StripeConfig) -> None:
        bases: Any = {"api": config.api_base.rstrip("/")} if config.api_base else None
        self.config = config
        self._http = stripe.HTTPXClient(timeout=config.timeout_s)
        self._client = stripe.StripeClient(
            config.api_key,
            base_addresses=bases,
            stripe_version=STRIPE_API_VERSION,
            http_client=self._http,
            max_network_retries=0,
        )
        self.v1 = self._client.v1

    async def aclose(self) -> None:
        """Close the connection pool (the api's shutdown)."""
        await self._http.close_async()

    async def _call(self, coro: Any) -> dict[str, Any]:
        try:
            return _plain(await coro)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        except OSError as exc:  # below the library: the socket itself
            raise StripeUnreachable(f"{type(exc).__name__}: {exc}") from exc

    # Customers and payment methods
    async def create_customer(
        self, customer_id: str, name: str, idempotency_key: str
    ) -> dict[str, Any]:
        return await self._call(
            self.v1.customers.create_async(
                params={"name": name, "metadata": {"customer_id": customer_id}},
                options={"idempotency_key": idempotency_key},
            )
        )

    async def payment_method(self, payment_method_id: str) -> dict[str, Any]:
        return await self._call(self.v1.payment_methods.retrieve_async(payment_method_id))

    async def attach_payment_method(
        self, payment_method_id: str, stripe_customer: str
    ) -> dict[str, Any]:
        return await self._call(
            self.v1.payment_methods.attach_async(
                payment_method_id, params={"customer": stripe_customer}
            )
        )

    async def detach_payment_method(self, payment_method_id: str) -> dict[str, Any]:
        return await self._call(self.v1.payment_methods.detach_async(payment_method_id))

    async def setup_intent(self, setup_intent_id: str) -> dict[str, Any]:
        return await self._call(self.v1.setup_intents.retrieve_async(setup_intent_id))

    # Checkout
    async def create_checkout_session(
        self, params: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        return await self._call(
            self.v1.checkout.sessions.create_async(
                params=cast(Any, params), options={"idempotency_key": idempotency_key}
            )
        )

    async def checkout_session(self, session_id: str) -> dict[str, Any]:
        return await self._call(self.v1.checkout.sessions.retrieve_async(session_id))

    # Payment intents
    async def charge_off_session(
        self,
        *,
        stripe_customer: str,
        payment_method: str,
        amount_minor: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> dict[str, Any]:
        """Create and confirm a PaymentIntent for a customer who is not present. (No
        ``description``: localstripe refuses parameters it does not know.)"""
        return await self._call(
            self.v1.payment_intents.create_async(
                params={
                    "amount": amount_minor,
                    "currency": currency.lower(),
                    "customer": stripe_customer,
                    "payment_method": payment_method,
                    "off_session": True,
                    "confirm": True,
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            )
        )

    async def payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return await self._call(self.v1.payment_intents.retrieve_async(payment_intent_id))

    async def charge(self, charge_id: str) -> dict[str, Any]:
        return await self._call(self.v1.charges.retrieve_async(charge_id))

    async def refunds_of(self, charge_id: str) -> list[dict[str, Any]]:
        """Every refund of a charge (``charge.refunded`` no longer lists them)."""
        return [r async for r in self._pages(self.v1.refunds.list_async, {"charge": charge_id})]

    async def find_attempt(
        self, stripe_customer: str, attempt_key: str, since: int
    ) -> dict[str, Any] | None:
        """The PaymentIntent made for ``attempt_key`` (its ``metadata.attempt_key``), or None.

        Looked up through the customer's charges since ``since`` (unix seconds): every
        intent that moved or tried to move money has one, and the charge list filters by
        customer and time on Stripe and on stand-ins alike. An intent that never charged
        (waiting for authentication) is not found; retrying under the same idempotency key
        returns it on Stripe.
        """
        seen: set[str] = set()
        async for charge in self._pages(
            self.v1.charges.list_async,
            {"customer": stripe_customer, "created": {"gt": since - 1}},
        ):
            intent_id = charge.get("payment_intent")
            if not isinstance(intent_id, str) or intent_id in seen:
                continue
            seen.add(intent_id)
            intent = await self.payment_intent(intent_id)
            if (intent.get("metadata") or {}).get("attempt_key") == attempt_key:
                return intent
        return None

    async def events_since(self, since: int) -> AsyncIterator[dict[str, Any]]:
        """Every Stripe event created at or after ``since`` (unix seconds), newest first."""
        async for event in self._pages(self.v1.events.list_async, {"created": {"gte": since}}):
            yield event

    async def _pages(self, method: Any, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        after: str | None = None
        while True:
            page_params = {**params, "limit": LIST_PAGE}
            if after is not None:
                page_params["starting_after"] = after
            page = await self._call(method(params=page_params))
            data = page.get("data") or []
            for item in data:
                yield item
            if not page.get("has_more") or not data:
                return
            after = data[-1]["id"]
