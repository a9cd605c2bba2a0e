"""Run localbucket (the S3 stand-in behind the durable broker) quietly, stopping on SIGTERM.

``python -m streambill.broker.bucket [localbucket arguments]``. Same as the ``localbucket``
command, except that it logs warnings only (localbucket logs every request at INFO, which
fills the data dir under load) and that SIGTERM closes the server instead of killing it
mid-write. Objects are written to a temporary file and renamed, so either way no object is
ever half-written.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import localbucket


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # localbucket.main() closes its server on KeyboardInterrupt


def main() -> int:
    # basicConfig in localbucket.main() is a no-op once the root logger has a handler.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    localbucket.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
