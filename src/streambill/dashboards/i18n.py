"""German and English for the pages: one JSON file per area under ``i18n/``, each
``{"de": {key: text}, "en": {key: text}}``; ``common.json`` holds what every page shares.

The language is the ``lang`` query parameter (which also sets the :data:`LANG_COOKIE`), else
the cookie, else the platform's default (``STREAMBILL_DASHBOARD_LANGUAGE``, German).
A test holds every key present in both languages.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Final, Literal, cast

Lang = Literal["de", "en"]
LANGS: Final[tuple[Lang, ...]] = ("de", "en")
LANG_COOKIE: Final = "streambill_lang"
AREAS: Final = ("common", "portal", "reseller", "admin")
_DIR: Final = Path(__file__).parent / "i18n"


@functools.cache
def catalogue(area: str) -> dict[str, dict[str, str]]:
    """One area's messages by language (read once)."""
    data = json.loads((_DIR / f"{area}.json").read_text(encoding="utf-8"))
    return {lang: dict(data.get(lang, {})) for lang in LANGS}


def messages(area: str, lang: Lang) -> dict[str, str]:
    """What a page of ``area`` says in ``lang``: the common messages and its own."""
    merged = dict(catalogue("common")[lang])
    if area != "common" and (_DIR / f"{area}.json").is_file():
        merged.update(catalogue(area)[lang])
    return merged


def pick(query: str | None, cookie: str | None, default: str) -> Lang:
    """The language to use.

    >>> pick("en", "de", "de"), pick(None, "en", "de"), pick("xx", None, "de")
    ('en', 'en', 'de')
    """
    for candidate in (query, cookie, default):
        if candidate in LANGS:
            return cast(Lang, candidate)
    return "de"
