"""Statement documents from a stored statement: the CSV to the byte, the PDF's totals, and
both the same whenever they are rendered."""

from __future__ import annotations

import contextlib
import re
import zlib
from datetime import UTC, datetime

from streambill.commissions.render import render_csv, render_pdf
from streambill.control.models import Statement

CLOSED = datetime(2026, 11, 4, 0, 0, tzinfo=UTC)


def _statement() -> Statement:
    return Statement(
        id="st_res_1_2026-11",
        reseller_id="res_1",
        month="2026-11",
        reseller_name="Nordwind Telecom",
        brand_name="Nordwind",
        currency="EUR",
        timezone="Europe/Berlin",
        base_micros=1_100_000_000,
        tier=1,
        rate="0.275",
        commission_micros=302_500_000,
        bonus_micros=5_000_000,
        month_total_micros=307_500_000,
        late_micros=-4_125_000,
        total_micros=303_375_000,
        entry_count=4,
        lines=[
            {
                "customer_id": "cus_1",
                "name": "Praxis Dr. Weber, Berlin",
                "base_micros": 900_000_000,
                "commission_micros": 225_000_000,
                "bonus_micros": 5_000_000,
                "total_micros": 230_000_000,
            },
            {
                "customer_id": "cus_2",
                "name": "=cmd|' /C calc'!A0",
                "base_micros": 200_000_000,
                "commission_micros": 77_500_000,
                "bonus_micros": 0,
                "total_micros": 77_500_000,
            },
        ],
        late_lines=[{"month": "2026-10", "amount_micros": -4_125_000}],
        closed_at=CLOSED,
        closed_by="admin:-:admin",
        payout_id=None,
        carried_run_id=None,
    )


def test_the_csv_is_exactly_this() -> None:
    head = "st_res_1_2026-11,res_1,2026-11"
    assert render_csv(_statement()) == (
        "statement_id,reseller_id,month,line,customer_id,description,base,rate,commission,"
        "bonus,total,currency\r\n"
        f'{head},customer,cus_1,"Praxis Dr. Weber, Berlin",900.00,,225.00,5.00,230.00,EUR\r\n'
        f"{head},customer,cus_2,'=cmd|' /C calc'!A0,200.00,,77.50,0.00,77.50,EUR\r\n"
        f"{head},month,,tier 1,1100.00,0.275,302.50,5.00,307.50,EUR\r\n"
        f"{head},late_adjustment,,late adjustment 2026-10,,,,,-4.125,EUR\r\n"
        f"{head},total,,statement total,,,,,303.375,EUR\r\n"
    )


def _pdf_text(pdf: bytes) -> str:
    """The text of every content stream (fpdf2 deflates them)."""
    out = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        data = match.group(1)
        with contextlib.suppress(zlib.error):  # a stream fpdf2 did not deflate
            data = zlib.decompress(data)
        out.append(data.decode("latin-1"))
    # PDF string literals escape parentheses and backslashes
    text = "\n".join(out)
    return text.replace("\\(", "(").replace("\\)", ")").replace("\\\\", "\\")


def test_the_pdf_shows_reseller_month_lines_and_totals() -> None:
    pdf = render_pdf(_statement())
    assert pdf.startswith(b"%PDF-")
    assert pdf.rstrip().endswith(b"%%EOF")
    text = _pdf_text(pdf)
    for expected in (
        "Nordwind",
        "Commission statement 2026-11 (Europe/Berlin)",
        "Praxis Dr. Weber, Berlin",
        "1,100.00 EUR",
        "27.5 %",
        "302.50 EUR",
        "Late adjustment 2026-10",
        "-4.125 EUR",
        "303.375 EUR",
    ):
        assert expected in text, expected
    assert b"D:20261104000000" in pdf  # its date is the close, not the rendering


def test_documents_are_the_same_bytes_every_time() -> None:
    assert render_pdf(_statement()) == render_pdf(_statement())
    assert render_csv(_statement()) == render_csv(_statement())
