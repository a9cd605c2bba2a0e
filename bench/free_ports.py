"""Print four free TCP ports: broker, api, the first of N consecutive free ones, ml.

Usage: python bench/free_ports.py N  (N workers listen on first, first + 1, ...)
"""

from __future__ import annotations

import random
import socket
import sys


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick(count: int, taken: set[int], rng: random.Random) -> int:
    for _ in range(1000):
        first = rng.randrange(20_000, 60_000 - count)
        ports = range(first, first + count)
        if not taken.intersection(ports) and all(is_free(p) for p in ports):
            taken.update(ports)
            return first
    raise SystemExit(f"no run of {count} free ports found")


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rng = random.Random()
    taken: set[int] = set()
    print(
        pick(1, taken, rng),
        pick(1, taken, rng),
        pick(max(1, workers), taken, rng),
        pick(1, taken, rng),
    )


if __name__ == "__main__":
    main()
