"""Which browser origins the api trusts (WebSocket handshakes, cookie-authenticated writes)."""

from __future__ import annotations


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, allowed: frozenset[str], host: str | None = None) -> bool:
    """A missing Origin (not a browser) passes; a present one must be listed, or name the
    host the request was sent to (a page of this api's own host, e.g. a white-label
    dashboard: a browser does not let another site's page forge either header).

    >>> allowed = frozenset({"https://app.example.com"})
    >>> origin_allowed(None, allowed), origin_allowed("https://APP.example.com/", allowed)
    (True, True)
    >>> origin_allowed("https://evil.example", allowed), origin_allowed("null", allowed)
    (False, False)
    >>> origin_allowed("http://acme.localhost:8000", allowed, host="acme.localhost:8000")
    True
    >>> origin_allowed("http://evil.localhost:8000", allowed, host="acme.localhost:8000")
    False
    """
    if origin is None:
        return True
    normalized = normalize_origin(origin)
    if normalized in allowed:
        return True
    if host is None or "://" not in normalized:
        return False
    return normalized.split("://", 1)[1] == host.strip().lower()
