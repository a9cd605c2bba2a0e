"""The dashboards' pure parts: messages in both languages for every key a page uses, the
demo's sign-ins and brands, and the vendored chart library's unpacking."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from streambill import demo_logins
from streambill.dashboards import i18n, vendor
from streambill.loadgen.population import build_population

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


def _script_keys(name: str) -> set[str]:
    path = DASHBOARDS / "static" / "js" / name
    return set(re.findall(r"""SB\.t\(\s*["']([a-z0-9_]+)["']""", path.read_text()))


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
