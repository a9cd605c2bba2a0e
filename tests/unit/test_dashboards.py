"""The dashboards' pure parts: messages in both languages for every key a page uses, the
demo's sign-ins and brands, and the vendored chart library's unpacking."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import get_args

import pytest

from streambill import demo_logins
from streambill.commissions.queries import BONUS_KINDS
from streambill.dashboards import i18n, vendor
from streambill.loadgen.population import build_population
from streambill.streams.events import PaymentKind

DASHBOARDS = Path(i18n.__file__).parent
AREAS = ("portal", "reseller", "admin")


@pytest.mark.parametrize("area", i18n.AREAS)
def test_every_message_exists_in_german_and_english(area: str) -> None:
    catalogue = i18n.catalogue(area)
    assert set(catalogue["de"]) == set(catalogue["en"])
    empty = [k for lang in i18n.LANGS for k, v in catalogue[lang].items() if not v.strip()]
    assert empty == []


def _template_keys(name: str) -> set[str]:
    text = (DASHBOARDS / "templates" / name).read_text()
    return set(re.findall(r"\bt\.([a-z0-9_]+)", text))


# t("key") or SB.t("key"), then "," or ")": a literal key (not obj.t(...), not t("prefix_" + x))
KEY_CALL = re.compile(r"""(?:(?<![\w$.])|(?<=\bSB\.))t\(\s*["']([a-z0-9_]+)["']\s*[,)]""")


def _script_keys(name: str) -> set[str]:
    """Keys a script asks for literally: ``t("key")`` or ``SB.t("key")`` (not ``x.t(``)."""
    path = DASHBOARDS / "static" / "js" / name
    return set(KEY_CALL.findall(path.read_text()))


# Keys the scripts build from a prefix and a value the system emits: every value needs its
# message, in both languages (or the page shows a raw code).
ALERT_KINDS = (
    "low_balance",
    "depleted",
    "recovered",
    "topup_failed",
    "topup_requires_action",
    "predicted_depletion",
    "fraud_suspected",
)
BUILT_KEYS = {
    "admin": {f"alert_{k}" for k in ALERT_KINDS},
    # a customer never receives fraud_suspected (the live hub and GET /v2/alerts hide it)
    "portal": {f"alert_{k}" for k in ALERT_KINDS if k != "fraud_suspected"}
    | {f"kind_{k}" for k in ("usage", *get_args(PaymentKind))},
    "reseller": {f"kind_{k}" for k in ("accrual", "true_up", *BONUS_KINDS)},
}


@pytest.mark.parametrize("area", AREAS)
def test_every_value_a_page_names_by_prefix_has_a_message(area: str) -> None:
    for lang in i18n.LANGS:
        missing = sorted(BUILT_KEYS[area] - set(i18n.messages(area, lang)))
        assert missing == [], f"{area} ({lang}) lacks {missing}"


def test_the_key_finder_sees_plain_and_namespaced_calls() -> None:
    text = 'x = t("one"); SB.t("two", {n: 1}); obj.t("not_me"); _t("nor_me"); t("prefix_" + k)'
    found = set(KEY_CALL.findall(text))
    assert found == {"one", "two"}


@pytest.mark.parametrize("area", AREAS)
def test_every_key_a_page_uses_has_a_message(area: str) -> None:
    used = _template_keys(f"{area}.html") | _template_keys("base.html")
    if (DASHBOARDS / "static" / "js" / f"{area}.js").exists():
        used |= _script_keys(f"{area}.js")
    used |= _script_keys("common.js")
    for lang in i18n.LANGS:
        missing = sorted(used - set(i18n.messages(area, lang)))
        assert missing == [], f"{area} ({lang}) lacks {missing}"


def test_the_login_page_has_every_message() -> None:
    used = _template_keys("login.html") | _script_keys("login.js")
    used |= {f"login_title_{a}" for a in AREAS} | {f"login_intro_{a}" for a in AREAS}
    for lang in i18n.LANGS:
        assert sorted(used - set(i18n.messages("common", lang))) == []


def test_the_demo_gives_every_reseller_a_brand_and_users_for_every_area() -> None:
    population = build_population(50, 7)
    branding = demo_logins.branding_requests(population)
    slugs = [body["slug"] for _, body in branding]
    assert len(slugs) == len(set(slugs)) == len(population.resellers) == 4
    assert all(re.fullmatch(r"[a-z0-9-]{2,63}", slug) for slug in slugs)
    users = demo_logins.user_requests(population, "x" * 16)
    by_email = {u["email"]: u for u in users}
    assert len(by_email) == len(users)
    # every login the banner prints exists, with the role of its area
    roles = {"admin": "admin", "reseller": "reseller", "portal": "customer"}
    for login in demo_logins.banner_logins(tuple(r.name for r in population.resellers)):
        assert by_email[login.email]["role"] == roles[login.area]
    # the customer user of a reseller is one of its customers, its most active one
    first = population.resellers[0]
    own = [c for c in population.customers if c.parent_id == first.account_id]
    chosen = by_email[demo_logins.customer_email(demo_logins.slug_of(first.name))]
    assert chosen["tenant_id"] == max(own, key=lambda c: c.weight).account_id


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_the_chart_library_is_unpacked_to_the_served_names(tmp_path: Path) -> None:
    members = {member: member.encode() for member in vendor.FILES}
    vendor.unpack(_tarball(members), tmp_path)
    assert vendor.installed(tmp_path)
    for member, served in vendor.FILES.items():
        assert (tmp_path / served).read_bytes() == member.encode()
    (tmp_path / "VERSION").write_text("uplot@0.0.1\n")
    assert not vendor.installed(tmp_path)  # another version is fetched again


def test_a_tarball_without_the_library_is_refused(tmp_path: Path) -> None:
    with pytest.raises(vendor.VendorError):
        vendor.unpack(_tarball({"package/README.md": b"x"}), tmp_path)
