"""Payments: Stripe top-ups, signed webhooks and auto top-up.

- :mod:`streambill.payments.signature` -- ``Stripe-Signature`` verification: HMAC-SHA256 over
  ``"<t>.<raw body>"``, compared in constant time, accepted only within a tolerance of the
  api's clock in both directions.
- :mod:`streambill.payments.stripe_events` -- Stripe events to ``billing.payments.v1`` events
  whose ids make every payment, refund and dispute apply once.
"""
