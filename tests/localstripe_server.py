"""Start localstripe without its disk persistence: ``python tests/localstripe_server.py --port N``.

localstripe pickles its whole store to ``/tmp/localstripe.pickle`` after every object it
writes. That makes each write cost time in proportion to everything stored (a PaymentIntent
writes several objects: ~90 ms each once a few hundred customers exist, which is the stand-in
measuring itself, not the code under test), and every localstripe on the machine shares that
one file. The tests and the bench start it fresh every time and never load the file, so the
dump is switched off here; everything localstripe answers over HTTP is unchanged.
"""

from __future__ import annotations

import sys

import localstripe.resources
from localstripe.server import start


def main() -> None:
    localstripe.resources.Store.dump_to_disk = lambda self: None
    if "--from-scratch" not in sys.argv:
        sys.argv.append("--from-scratch")
    start()


if __name__ == "__main__":
    main()
