"""Month close and payouts of reseller commissions (the accrual itself is
:mod:`streambill.domain.commissions` and the worker's agent; the entries live in ClickHouse).

- :mod:`.close` -- :class:`~.close.MonthCloser`: one statement per reseller and month, written
  once after the month's grace, carrying late entries of earlier months as late adjustments.
- :mod:`.autoclose` -- the leased background task that closes due months in the api.
- :mod:`.statements` / :mod:`.render` -- reading statements; CSV and PDF documents.
- :mod:`.payouts` -- payout runs (minimum, carry-forward, sub-cent remainders), paid/failed.
- :mod:`.sepa` -- pain.001.001.03 files, validated against the official XSD.
- :mod:`.remote` -- the command line's client for the running api's admin endpoints.
- :mod:`.queries`, :mod:`.months`, :mod:`.schemas`, :mod:`.errors` -- ClickHouse reads,
  month arithmetic in a time zone, public shapes, stable error codes.
"""
