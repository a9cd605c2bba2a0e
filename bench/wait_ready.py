"""Wait until every URL answers 200, or fail when the stack's process exits or time runs out.

Usage: python bench/wait_ready.py --pid PID --timeout SECONDS URL [URL ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    waiting = list(args.urls)
    with httpx.Client(timeout=2.0) as client:
        while waiting:
            if not alive(args.pid):
                print(f"[wait_ready] the stack (pid {args.pid}) exited", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(
                    f"[wait_ready] not ready after {args.timeout:.0f}s: {waiting}", file=sys.stderr
                )
                return 1
            try:
                if client.get(waiting[0]).status_code == 200:
                    print(f"[wait_ready] ready: {waiting.pop(0)}", file=sys.stderr)
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
