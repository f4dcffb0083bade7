"""Seal cost of the installed ``varta`` (printed, not a test).

Median ns per ``varta._varta._testing.seal_shared`` call (one 32-byte frame sealed
into a 60-byte ChaCha20-Poly1305 datagram, plus the Python call around it),
over ``--rounds`` timed batches of ``--batch`` calls.

``scripts/wheels.sh`` runs it in a venv holding the release wheel and in one
built from the sdist: the two must agree, which shows the sdist builds with
the same Rust configuration (the portable Poly1305 backend) as the wheel.

    python bench/seal.py [--rounds N] [--batch B] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import varta
from varta._varta import _testing


def seal_ns(rounds: int, batch: int) -> float:
    key = varta.Key.generate()
    seal = _testing.seal_shared
    iv = bytes(range(8))
    frame = varta.encode(varta.Status.OK, 4242, 1, 1, 0)
    for counter in range(batch):  # warm-up
        seal(key, iv, counter, frame)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for counter in range(batch):
            seal(key, iv, counter, frame)
        samples.append((time.perf_counter_ns() - t0) / batch)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    ns = seal_ns(args.rounds, args.batch)
    if args.json:
        print(json.dumps({"seal_ns": ns, "version": varta.__version__}))
    else:
        print(f"varta {varta.__version__}: {ns:.0f} ns per seal (median of {args.rounds})")


if __name__ == "__main__":
    main()
