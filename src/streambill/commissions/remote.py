"""The command line's way to close months and run payouts: through the running api's admin
endpoints, with the admin key.

The api is the one process that may open the embedded ClickHouse (chDB allows one process per
data directory), and it owns the control-plane database's migrations, so the commands ask it
rather than opening either themselves. The api's address is ``STREAMBILL_API_HOST`` /
``STREAMBILL_API_PORT`` (or ``--api-url``); the admin key is ``STREAMBILL_ADMIN_API_KEY`` or the
one ``streambill up`` keeps in the data dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import httpx

from streambill.settings import Settings

ADMIN_KEY_FILE: Final = "admin_api_key"
TIMEOUT_S: Final = 300.0  # a close of every reseller reads ClickHouse once per reseller


class RemoteError(Exception):
    """The api could not be reached or refused; the message says what to do."""


def api_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def admin_key(settings: Settings) -> str:
    if settings.admin_api_key:
        return settings.admin_api_key
    kept = settings.data_dir / ADMIN_KEY_FILE
    if kept.exists() and kept.read_text().strip():
        return kept.read_text().strip()
    raise RemoteError(f"no admin key: set STREAMBILL_ADMIN_API_KEY (or run where {kept} exists)")


class AdminApi:
    def __init__(self, settings: Settings, base_url: str | None = None) -> None:
        self.base_url = (base_url or api_url(settings)).rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {admin_key(settings)}"},
            timeout=TIMEOUT_S,
            trust_env=False,
        )

    def __enter__(self) -> AdminApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        try:
            response = self._client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise RemoteError(
                f"the api at {self.base_url} did not answer ({exc}); start it with"
                " `streambill up` or `streambill api`, or pass --api-url"
            ) from None
        if response.status_code >= 300:
            try:
                error = response.json()["error"]
                detail = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                detail = response.text[:300]
            raise RemoteError(f"{method} {path}: {response.status_code} {detail}")
        return response

    def close_month(self, month: str, reseller_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"month": month}
        if reseller_id:
            body["reseller_id"] = reseller_id
        result: dict[str, Any] = self._call("POST", "/v2/commissions/close", body).json()
        return result

    def run_payouts(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v2/payouts/runs").json()
        return result

    def download(self, path: str, target: Path) -> int:
        content = self._call("GET", path).content
        target.write_bytes(content)
        return len(content)
