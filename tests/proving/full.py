"""The proving ground's full tier: every scenario at full size, then a table.

    .venv/bin/python tests/proving/full.py            # after scripts/test.sh built the venv

10^6 fuzzed datagrams with exact per-counter accounting, 10 random SIGKILLs
of the daemon, a recovery storm of 200 agents, 50 hung recovery children
killed by the timeout, /metrics abuse, a full disk (root), logrotate under
load, the secure replay case, and the proptest fuzz target for the decoder
and the secure open path (``VARTA_FUZZ_CASES`` cases per property). Exits 1
if any scenario failed (its row says why). Takes several minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import harness  # noqa: E402

ROOT = HERE.parents[1]
FUZZ_CASES = int(os.environ.get("VARTA_FUZZ_CASES", "20000"))


def proptest_fuzz() -> dict[str, Any]:
    env = dict(os.environ, VARTA_FUZZ_CASES=str(FUZZ_CASES))
    r = subprocess.run(
        ["cargo", "test", "-q", "-p", "varta-core", "--test", "fuzz_decode_open"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "5 passed" in r.stdout, r.stdout
    return {"properties": 5, "cases_each": FUZZ_CASES}


def tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="varta-full-"))


SCENARIOS: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("fuzz 10^6 datagrams", lambda: harness.fuzz_datagrams(1_000_000, deadline_s=600)),
    ("10 random SIGKILLs", lambda: harness.sigkill_loop(tmp(), kills=10, agents=6)),
    ("recovery storm, 200 agents", lambda: harness.recovery_storm(tmp(), agents=200)),
    ("hung recovery children", lambda: harness.recovery_storm(tmp(), agents=50, hang=True)),
    ("/metrics abuse", lambda: harness.metrics_abuse(tmp(), attackers=200, seconds=10)),
    ("full disk (tmpfs)", lambda: harness.full_disk(tmp(), agents=8, refusals=20)),
    ("logrotate under load", lambda: harness.logrotate_under_load(tmp(), rotations=10)),
    ("secure replay", lambda: harness.secure_replay(frames=200)),
    ("torn TSV tail", lambda: harness.torn_tail(tmp())),
    ("proptest fuzz (decode, open)", proptest_fuzz),
]


def main() -> int:
    rows: list[tuple[str, str, float, str]] = []
    failed = 0
    for name, run in SCENARIOS:
        t0 = time.monotonic()
        try:
            figures = run()
            status = "ok"
            text = ", ".join(f"{k}={v}" for k, v in figures.items() if k != "seconds")
        except Exception as exc:  # every failure goes in the table
            failed += 1
            status = "FAIL"
            text = f"{type(exc).__name__}: {exc}"[:300]
            traceback.print_exc()
        rows.append((name, status, time.monotonic() - t0, text))
        print(f"{status:4} {name} ({rows[-1][2]:.1f} s): {text}", flush=True)
    width = max(len(r[0]) for r in rows)
    print()
    print(f"| {'scenario'.ljust(width)} | result | seconds | figures |")
    print(f"|{'-' * (width + 2)}|--------|---------|---------|")
    for name, status, secs, text in rows:
        print(f"| {name.ljust(width)} | {status:6} | {secs:7.1f} | {text} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
