"""Fetch the chart library the dashboards serve: uPlot from the npm registry, pinned and
checked against the sha512 the registry publishes for it.

Run once at install (``make`` does: ``python -m streambill.dashboards.vendor``); the files
land in ``static/vendor`` beside the pages (git ignores them) and are served by the api, so
pages never load anything from a CDN and work offline. No node or npm is needed: the package
is a gzipped tarball fetched over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

PACKAGE: Final = "uplot"
VERSION: Final = "1.6.32"
TARBALL: Final = f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
# the registry's dist.integrity for this version (`npm view uplot@1.6.32 dist.integrity`)
INTEGRITY: Final = (
    "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImk"
    + "bLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
)
# tarball member -> file served under /static/vendor/
FILES: Final = {
    "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "package/dist/uPlot.min.css": "uPlot.min.css",
    "package/LICENSE": "uPlot.LICENSE",
}
VENDOR_DIR: Final = Path(__file__).parent / "static" / "vendor"
TIMEOUT_S: Final = 60


class VendorError(RuntimeError):
    pass


def installed(target: Path = VENDOR_DIR) -> bool:
    return all((target / name).is_file() for name in FILES.values()) and (
        (target / "VERSION").read_text().strip() == f"{PACKAGE}@{VERSION}"
        if (target / "VERSION").is_file()
        else False
    )


def check_integrity(data: bytes, integrity: str = INTEGRITY) -> None:
    """Raise unless ``data`` matches an npm ``sha512-<base64>`` integrity string.

    >>> check_integrity(b"x", "sha512-" + base64.b64encode(hashlib.sha512(b"x").digest()).decode())
    >>> check_integrity(b"y", "sha512-" + base64.b64encode(hashlib.sha512(b"x").digest()).decode())
    Traceback (most recent call last):
    ...
    streambill.dashboards.vendor.VendorError: uplot@1.6.32: sha512 mismatch, refusing the download
    """
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise VendorError(f"unsupported integrity {algorithm!r}")
    if base64.b64encode(hashlib.sha512(data).digest()).decode() != expected:
        raise VendorError(f"{PACKAGE}@{VERSION}: sha512 mismatch, refusing the download")


def unpack(data: bytes, target: Path = VENDOR_DIR) -> None:
    """Write the served files from the (verified) tarball into ``target``, atomically each."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member, name in FILES.items():
            try:
                source = archive.extractfile(member)
            except KeyError:
                source = None
            if source is None:
                raise VendorError(f"{member} missing from {TARBALL}")
            partial = target / f".{name}.partial"
            partial.write_bytes(source.read())
            os.replace(partial, target / name)
    (target / "VERSION").write_text(f"{PACKAGE}@{VERSION}\n")


def fetch(target: Path = VENDOR_DIR) -> Path:
    """Download, verify and unpack unless the pinned version is already there."""
    if installed(target):
        return target
    request = urllib.request.Request(TARBALL, headers={"User-Agent": "streambill-vendor"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        data = response.read()
    check_integrity(data)
    unpack(data, target)
    log.info("%s@%s installed into %s", PACKAGE, VERSION, target)
    return target


def main() -> int:
    try:
        where = fetch()
    except (OSError, VendorError) as exc:
        print(f"could not install the dashboards' chart library: {exc}", file=sys.stderr)
        return 1
    print(f"dashboard assets: {PACKAGE}@{VERSION} in {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
