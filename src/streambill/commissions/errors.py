"""The errors of month close and payouts, each with its stable code (api/errors.py maps codes
to HTTP status; ``api/routes/payouts.py`` registers these)."""

from __future__ import annotations

from streambill.errors import StreambillError


class MonthNotClosable(StreambillError):
    """The month has not ended in the reseller's time zone plus the close grace."""

    code = "month_not_closable"


class SepaNotConfigured(StreambillError):
    """A SEPA payout is due but the platform's debtor account is not set (or not valid)."""

    code = "sepa_not_configured"


class SepaFileInvalid(StreambillError):
    """A generated pain.001 file failed validation against the official XSD; nothing stored."""

    code = "sepa_file_invalid"


class PayoutRunBusy(StreambillError):
    """Another payout run holds the lease."""

    code = "payout_run_in_progress"
