"""Statement documents, rendered from the stored statement alone, so a document of a closed
month is the same, byte for byte, whenever it is asked for: CSV (one table, every row
self-describing) and PDF (fpdf2, its dates set from the statement).

Money is formatted from integer micros, exactly (no float anywhere): ``307.50``, and in the
PDF with thousands separators, ``1,234.567``.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from decimal import Decimal
from typing import Final

from fpdf import FPDF

from streambill.control.models import Statement
from streambill.domain.money import format_micros

CSV_COLUMNS: Final = (
    "statement_id",
    "reseller_id",
    "month",
    "line",
    "customer_id",
    "description",
    "base",
    "rate",
    "commission",
    "bonus",
    "total",
    "currency",
)
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_LATIN1_SPECIAL: Final = {
    "Ł": "L",
    "ł": "l",
    "Đ": "D",
    "đ": "d",
    "Œ": "OE",
    "œ": "oe",
    "€": "EUR",
    "–": "-",
    "—": "-",
    "‘": "'",
    "’": "'",
    "“": '"',
    "”": '"',
    "„": '"',
}


def amount(micros: int) -> str:
    """Major units with at least two decimals and thousands separators.

    >>> amount(1_234_567_000), amount(-150_000), amount(5)
    ('1,234.567', '-0.15', '0.000005')
    """
    return format(Decimal(format_micros(micros)), ",f")


def _cell(text: str) -> str:
    """A text cell a spreadsheet shows as text, never runs as a formula.

    >>> _cell("=HYPERLINK(1)"), _cell("Praxis")
    ("'=HYPERLINK(1)", 'Praxis')
    """
    return "'" + text if text.startswith(_FORMULA_START) else text


def statement_filename(statement: Statement, extension: str) -> str:
    return f"{statement.id}.{extension}"


def render_csv(statement: Statement) -> str:
    """The statement as CSV (RFC 4180, CRLF): customer lines, the month, late adjustments,
    the total. Amounts in major units of ``currency``, exact."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    money = format_micros

    def row(line: str, customer: str, description: str, figures: list[str]) -> None:
        # figures: base, rate, commission, bonus, total
        head = [statement.id, statement.reseller_id, statement.month]
        writer.writerow([*head, line, customer, _cell(description), *figures, statement.currency])

    for c in statement.lines:
        row(
            "customer",
            str(c["customer_id"]),
            str(c["name"]),
            [
                money(c["base_micros"]),
                "",
                money(c["commission_micros"]),
                money(c["bonus_micros"]),
                money(c["total_micros"]),
            ],
        )
    row(
        "month",
        "",
        f"tier {statement.tier}",
        [
            money(statement.base_micros),
            statement.rate,
            money(statement.commission_micros),
            money(statement.bonus_micros),
            money(statement.month_total_micros),
        ],
    )
    for late in statement.late_lines:
        description = f"late adjustment {late['month']}"
        row("late_adjustment", "", description, ["", "", "", "", money(late["amount_micros"])])
    row("total", "", "statement total", ["", "", "", "", money(statement.total_micros)])
    return out.getvalue()


def latin1(text: str) -> str:
    """Text the PDF's core font can show: Latin-1 as is, other letters without their accents,
    anything else as '?'.

    >>> latin1("Müller Łódź – 5 €"), latin1("東京")
    ('Müller Lódz - 5 EUR', '??')
    """
    out = []
    for ch in text:
        if ord(ch) < 256:
            out.append(ch if ch.isprintable() else " ")
            continue
        if ch in _LATIN1_SPECIAL:
            out.append(_LATIN1_SPECIAL[ch])
            continue
        base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
        out.append(base if base else "?")
    return "".join(out)


class _Document(FPDF):
    def __init__(self, footer: str) -> None:
        super().__init__(format="A4")
        self._footer_text = footer

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", size=8)
        self.cell(0, 10, latin1(f"{self._footer_text}  -  page {self.page_no()}"), align="C")


def render_pdf(statement: Statement) -> bytes:
    """The statement as a PDF: reseller (brand) and month, customer lines, the month's
    figures, late adjustments, the total. Deterministic: its dates are the close time."""
    brand = statement.brand_name or statement.reseller_name
    pdf = _Document(f"{statement.id} - closed {statement.closed_at.isoformat()}")
    pdf.set_creation_date(statement.closed_at)
    pdf.set_title(latin1(f"Commission statement {statement.month} - {brand}"))
    pdf.set_author("streambill")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, latin1(brand), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    for text in (
        f"Commission statement {statement.month} ({statement.timezone})",
        f"Reseller {statement.reseller_name} ({statement.reseller_id})",
        f"Amounts in {statement.currency}",
    ):
        pdf.cell(0, 6, latin1(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    _customer_table(pdf, statement)
    pdf.ln(4)
    _summary(pdf, statement)
    return bytes(pdf.output())


_WIDTHS: Final = (50, 48, 24, 24, 20, 24)  # mm: the A4 page less its margins


def _fit(pdf: FPDF, text: str, width: float) -> str:
    """``text`` cut (with '...') to what fits in ``width`` millimetres at the current font."""
    text = latin1(text)
    if pdf.get_string_width(text) <= width - 2:
        return text
    while text and pdf.get_string_width(text + "...") > width - 2:
        text = text[:-1]
    return text + "..."


def _row(pdf: FPDF, cells: list[str], *, bold: bool = False) -> None:
    pdf.set_font("Helvetica", "B" if bold else "", 8)
    for n, (text, width) in enumerate(zip(cells, _WIDTHS, strict=True)):
        align = "L" if n < 2 else "R"
        pdf.cell(width, 6, _fit(pdf, text, width), border="B", align=align)
    pdf.ln()


def _customer_table(pdf: FPDF, statement: Statement) -> None:
    _row(pdf, ["Customer", "Name", "Base", "Commission", "Bonus", "Total"], bold=True)
    for line in statement.lines:
        _row(
            pdf,
            [
                str(line["customer_id"]),
                str(line["name"]),
                amount(line["base_micros"]),
                amount(line["commission_micros"]),
                amount(line["bonus_micros"]),
                amount(line["total_micros"]),
            ],
        )
    if not statement.lines:
        pdf.set_font("Helvetica", "I", 9)
        pdf.cell(0, 6, "No commission entries in this month.", new_x="LMARGIN", new_y="NEXT")


def _summary(pdf: FPDF, statement: Statement) -> None:
    currency = statement.currency
    rate_percent = Decimal(statement.rate) * 100
    rows = [
        ("Base", amount(statement.base_micros)),
        (f"Rate (tier {statement.tier})", f"{rate_percent.normalize():f} %"),
        ("Commission", amount(statement.commission_micros)),
        ("Bonuses", amount(statement.bonus_micros)),
        (f"Month total {statement.month}", amount(statement.month_total_micros)),
    ]
    rows += [
        (f"Late adjustment {late['month']}", amount(int(late["amount_micros"])))
        for late in statement.late_lines
    ]
    for label, value in rows:
        pdf.set_font("Helvetica", size=10)
        pdf.cell(120, 6, latin1(label))
        pdf.cell(70, 6, f"{value} {currency}", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(120, 8, "Total")
    pdf.cell(
        70,
        8,
        f"{amount(statement.total_micros)} {currency}",
        align="R",
        border="T",
        new_x="LMARGIN",
        new_y="NEXT",
    )
