"""Secrets: API keys, session tokens and passwords. Nothing here stores a secret.

API keys look like ``sb_svc_<43 url-safe characters>``: the kind prefix tells a leaked key's
role at a glance (and lets secret scanners find it); 256 random bits make guessing pointless,
so a SHA-256 digest is all the database keeps, and a lookup is one indexed query. Passwords
are chosen by people, so they get argon2id (argon2-cffi's RFC 9106 low-memory profile).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from streambill.control.principal import Role
from streambill.errors import RateLimited

T = TypeVar("T")

KEY_PREFIX: Final[dict[str, str]] = {
    "admin": "sb_adm_",
    "reseller": "sb_res_",
    "customer": "sb_cus_",
    "service": "sb_svc_",
}
SESSION_PREFIX: Final = "sb_ses_"
DISPLAY_CHARS: Final = 12
_SECRET_BYTES: Final = 32
_HASHER: Final = PasswordHasher()
# Verifying against this keeps a login for an unknown e-mail as slow as a wrong password.
_DUMMY_HASH: Final = _HASHER.hash(secrets.token_urlsafe(16))


def digest(token: str) -> str:
    """The stored form of a key or session token.

    >>> digest("sb_svc_abc")
    '0303309f76f8a83b7d9b9154181f360ac19064ce7e099c090afb46e2106dca3a'
    """
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_key(role: Role) -> str:
    """A new key with its kind prefix.

    >>> new_api_key("service").startswith("sb_svc_"), len(new_api_key("reseller"))
    (True, 50)
    """
    return KEY_PREFIX[role] + secrets.token_urlsafe(_SECRET_BYTES)


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def display_prefix(token: str) -> str:
    """What may be shown of a key after its creation.

    >>> display_prefix("sb_svc_AbCdEfGhIjKlMn")
    'sb_svc_AbCdE…'
    """
    return token[:DISPLAY_CHARS] + "…"


def new_id(prefix: str) -> str:
    """An opaque object id, e.g. ``cus_5fz2k…``: 128 random bits, lower-case base 32.

    >>> len(new_id("cus")), new_id("key").startswith("key_")
    (30, True)
    """
    raw = secrets.token_bytes(16)
    return f"{prefix}_{base64.b32encode(raw).decode().rstrip('=').lower()}"


class PasswordPool:
    """argon2id off the event loop, a bounded number at a time.

    A hash or a check takes ~190 ms of CPU; on the api's event loop each one stalled usage
    ingest, webhooks and every live socket for that long. Here they run on ``workers``
    threads (argon2-cffi releases the interpreter lock while it hashes), and at most
    ``waiting`` more may queue: beyond that the attempt is refused at once with 429 rather
    than queued behind a storm.
    """

    def __init__(self, workers: int = 2, waiting: int = 8) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="passwords")
        self._limit = workers + waiting
        self._admitted = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._admitted >= self._limit:
            raise RateLimited("too many password checks at once", retry_after_s=1)
        self._admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._admitted -= 1


PASSWORDS: Final = PasswordPool()


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


async def hash_password_off_loop(password: str) -> str:
    return await PASSWORDS.run(hash_password, password)


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    return await PASSWORDS.run(verify_password, password_hash, password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists; never raises on a bad hash."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
