"""SEPA credit transfers: a pain.001.001.03 file for a payout run, built with ElementTree and
validated against the official XSD before anything stores it.

The XSD is the one the ``sepaxml`` package ships (``sepaxml/schemas/pain.001.001.03.xsd``);
only that file is used, loaded through ``importlib.resources`` and checked with
``xmlschema``. Ids are deterministic: ``MsgId`` and ``PmtInfId`` are the run's id, each
``EndToEndId`` its payout's id, ``CreDtTm`` and the execution date the run's time, so the
file of a run is always the same bytes. Names and remittance text are reduced to the SEPA
character set (Latin letters, digits, ``/-?:().,'+`` and space); amounts are whole cents.
"""

from __future__ import annotations

import importlib.resources
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Final
from xml.etree import ElementTree as ET

import xmlschema

from streambill.commissions.errors import SepaFileInvalid, SepaNotConfigured
from streambill.domain.money import MICROS_PER_UNIT
from streambill.errors import check

NAMESPACE: Final = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"
FORMAT: Final = "pain.001.001.03"
CENT_MICROS: Final = MICROS_PER_UNIT // 100
TRANSFERS_MAX: Final = 100_000
_NOT_SEPA: Final = re.compile(r"[^A-Za-z0-9/\-?:().,'+ ]")
_SPACES: Final = re.compile(r"\s+")
_IBAN: Final = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{1,30}$")
_BIC: Final = re.compile(r"^[A-Z]{6}[A-Z2-9][A-NP-Z0-9]([A-Z0-9]{3})?$")  # the XSD's pattern
_SPECIAL: Final = {"ß": "ss", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe"}


@dataclass(frozen=True)
class Debtor:
    """The platform's account that pays resellers (settings ``sepa_debtor_*``)."""

    name: str
    iban: str
    bic: str | None


@dataclass(frozen=True)
class Transfer:
    end_to_end_id: str
    amount_micros: int  # whole cents
    name: str
    iban: str
    bic: str | None
    remittance: str


def iban_valid(iban: str) -> bool:
    """Shape and ISO 7064 mod-97 check digits.

    >>> iban_valid("DE89370400440532013000"), iban_valid("DE89370400440532013001")
    (True, False)
    """
    if not _IBAN.match(iban):
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def bic_valid(bic: str | None) -> bool:
    return bic is not None and bool(_BIC.match(bic))


def debtor_from(name: str | None, iban: str | None, bic: str | None) -> Debtor:
    """The debtor, or ``sepa_not_configured`` when its name or IBAN is missing or wrong."""
    if not iban or not name or not sepa_text(name, 70):
        raise SepaNotConfigured(
            "a SEPA payout is due: set STREAMBILL_SEPA_DEBTOR_NAME and STREAMBILL_SEPA_DEBTOR_IBAN"
            " (and STREAMBILL_SEPA_DEBTOR_BIC)"
        )
    compact = iban.replace(" ", "").upper()
    if not iban_valid(compact):
        raise SepaNotConfigured("STREAMBILL_SEPA_DEBTOR_IBAN is not a valid IBAN")
    if bic is not None and not bic_valid(bic.upper()):
        raise SepaNotConfigured("STREAMBILL_SEPA_DEBTOR_BIC is not a valid BIC")
    return Debtor(name=name, iban=compact, bic=bic.upper() if bic else None)


def sepa_text(text: str, length_max: int) -> str:
    """Text in the SEPA character set, at most ``length_max`` characters.

    >>> sepa_text("Müller & Söhne GmbH — Straße 5", 70)
    'Muller Sohne GmbH - Strasse 5'
    """
    replaced = "".join(_SPECIAL.get(ch, ch) for ch in text)
    decomposed = unicodedata.normalize("NFKD", replaced)
    ascii_text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    ascii_text = ascii_text.replace("—", "-").replace("–", "-")
    cleaned = _SPACES.sub(" ", _NOT_SEPA.sub(" ", ascii_text)).strip()
    return cleaned[:length_max].strip()


def cents_text(micros: int) -> str:
    """Whole cents in micros as the XSD's decimal text.

    >>> cents_text(1_234_500_000)
    '1234.50'
    """
    check(micros % CENT_MICROS == 0 and micros >= 0, f"not whole cents: {micros}")
    cents = micros // CENT_MICROS
    return f"{cents // 100}.{cents % 100:02d}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _agent(parent: ET.Element, tag: str, bic: str | None) -> None:
    institution = _sub(_sub(parent, tag), "FinInstnId")
    if bic_valid(bic):
        _sub(institution, "BIC", bic)
    else:
        _sub(_sub(institution, "Othr"), "Id", "NOTPROVIDED")


def _account(parent: ET.Element, tag: str, iban: str) -> None:
    _sub(_sub(_sub(parent, tag), "Id"), "IBAN", iban)


def build_pain001(
    message_id: str, created_at: datetime, debtor: Debtor, transfers: Sequence[Transfer]
) -> str:
    """The pain.001.001.03 document (UTF-8 XML text) of one payment with ``transfers``."""
    check(0 < len(transfers) <= TRANSFERS_MAX, f"{len(transfers)} transfers in one file")
    at = created_at.astimezone(UTC)
    total = sum(t.amount_micros for t in transfers)
    # Unqualified names under a default namespace declared on the root: ElementTree's own
    # namespace handling would also qualify the (unqualified) Ccy attribute.
    document = ET.Element("Document", {"xmlns": NAMESPACE})
    initiation = _sub(document, "CstmrCdtTrfInitn")
    header = _sub(initiation, "GrpHdr")
    _sub(header, "MsgId", message_id)
    _sub(header, "CreDtTm", at.strftime("%Y-%m-%dT%H:%M:%S"))
    _sub(header, "NbOfTxs", str(len(transfers)))
    _sub(header, "CtrlSum", cents_text(total))
    _sub(_sub(header, "InitgPty"), "Nm", sepa_text(debtor.name, 70))
    payment = _sub(initiation, "PmtInf")
    _sub(payment, "PmtInfId", message_id)
    _sub(payment, "PmtMtd", "TRF")
    _sub(payment, "BtchBookg", "true")
    _sub(payment, "NbOfTxs", str(len(transfers)))
    _sub(payment, "CtrlSum", cents_text(total))
    _sub(_sub(_sub(payment, "PmtTpInf"), "SvcLvl"), "Cd", "SEPA")
    _sub(payment, "ReqdExctnDt", at.date().isoformat())
    _sub(_sub(payment, "Dbtr"), "Nm", sepa_text(debtor.name, 70))
    _account(payment, "DbtrAcct", debtor.iban)
    _agent(payment, "DbtrAgt", debtor.bic)
    _sub(payment, "ChrgBr", "SLEV")
    for transfer in transfers:
        item = _sub(payment, "CdtTrfTxInf")
        _sub(_sub(item, "PmtId"), "EndToEndId", transfer.end_to_end_id)
        _sub(_sub(item, "Amt"), "InstdAmt", cents_text(transfer.amount_micros), Ccy="EUR")
        if bic_valid(transfer.bic):
            _agent(item, "CdtrAgt", transfer.bic)
        _sub(_sub(item, "Cdtr"), "Nm", sepa_text(transfer.name, 70) or "unknown")
        _account(item, "CdtrAcct", transfer.iban)
        _sub(_sub(item, "RmtInf"), "Ustrd", sepa_text(transfer.remittance, 140))
    ET.indent(document)
    body = ET.tostring(document, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


@cache
def schema() -> xmlschema.XMLSchema:
    """The official pain.001.001.03 XSD, as shipped in the ``sepaxml`` package."""
    resource = importlib.resources.files("sepaxml").joinpath("schemas", "pain.001.001.03.xsd")
    with importlib.resources.as_file(resource) as path:
        return xmlschema.XMLSchema(str(path))


def validate(document: str) -> None:
    """Raise ``sepa_file_invalid`` (with the first problem) unless the XSD accepts it."""
    errors = list(schema().iter_errors(document))
    if errors:
        first = errors[0]
        where = getattr(first, "path", None) or "document"
        reason = getattr(first, "reason", None) or str(first).splitlines()[0]
        raise SepaFileInvalid(
            f"the pain.001 file does not validate ({len(errors)} problem(s)); at {where}: {reason}"
        )
