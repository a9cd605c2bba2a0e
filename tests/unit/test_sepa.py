"""pain.001.001.03 files: built deterministically, accepted by the official XSD (shipped in
sepaxml), and a broken file is refused: the check can fail."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streambill.commissions import sepa
from streambill.errors import InvariantViolation

AT = datetime(2026, 12, 4, 10, 30, tzinfo=UTC)
DEBTOR = sepa.Debtor("streambill platform", "DE89370400440532013000", "COBADEFFXXX")
TRANSFERS = [
    sepa.Transfer("po_1", 55_000_000, "Nordwind GmbH", "DE02120300000000202051", None, "x 2026-11"),
    sepa.Transfer(
        "po_2",
        1_234_560_000,
        "Élan Télécom SARL",
        "FR1420041010050500013M02606",
        "BNPAFRPPXXX",
        "y",
    ),
]


def test_a_file_validates_and_is_the_same_every_time() -> None:
    document = sepa.build_pain001("prun_1", AT, DEBTOR, TRANSFERS)
    sepa.validate(document)
    assert document == sepa.build_pain001("prun_1", AT, DEBTOR, TRANSFERS)
    assert "<MsgId>prun_1</MsgId>" in document and "<NbOfTxs>2</NbOfTxs>" in document
    assert "<CtrlSum>1289.56</CtrlSum>" in document
    assert "<EndToEndId>po_2</EndToEndId>" in document
    assert '<InstdAmt Ccy="EUR">1234.56</InstdAmt>' in document
    assert "<Nm>Elan Telecom SARL</Nm>" in document
    assert "<CreDtTm>2026-12-04T10:30:00</CreDtTm>" in document


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<PmtMtd>TRF</PmtMtd>", "<PmtMtd>CHK2</PmtMtd>"),  # not a payment method code
        ("<MsgId>prun_1</MsgId>", ""),  # a required element missing
        ('Ccy="EUR">55.00', 'Ccy="EURO">55.00'),  # not a currency code
        ("<IBAN>DE02120300000000202051</IBAN>", "<IBAN>de02 1203</IBAN>"),
    ],
)
def test_a_broken_file_does_not_validate(old: str, new: str) -> None:
    document = sepa.build_pain001("prun_1", AT, DEBTOR, TRANSFERS)
    assert old in document
    with pytest.raises(sepa.SepaFileInvalid) as refused:
        sepa.validate(document.replace(old, new, 1))
    assert refused.value.code == "sepa_file_invalid"


def test_amounts_are_whole_cents_and_ids_are_given() -> None:
    with pytest.raises(InvariantViolation):
        sepa.cents_text(1_234_567)
    with pytest.raises(InvariantViolation):
        sepa.build_pain001("prun_1", AT, DEBTOR, [])


@pytest.mark.parametrize(
    ("name", "iban", "bic"),
    [
        (None, "DE89370400440532013000", None),
        ("platform", None, None),
        ("platform", "DE89370400440532013001", None),  # check digits wrong
        ("platform", "DE89370400440532013000", "NOTABIC"),
    ],
)
def test_a_missing_or_wrong_debtor_is_not_configured(
    name: str | None, iban: str | None, bic: str | None
) -> None:
    with pytest.raises(sepa.SepaNotConfigured) as refused:
        sepa.debtor_from(name, iban, bic)
    assert refused.value.code == "sepa_not_configured"


def test_a_debtor_without_bic_is_not_provided() -> None:
    debtor = sepa.debtor_from("platform", "de89 3704 0044 0532 0130 00", None)
    document = sepa.build_pain001("prun_1", AT, debtor, TRANSFERS)
    sepa.validate(document)
    assert "<Id>NOTPROVIDED</Id>" in document and "DE89370400440532013000" in document
