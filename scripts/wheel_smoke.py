"""Smoke test for an installed varta wheel (run by scripts/wheels.sh in a fresh venv).

One beat from a varta.Varta agent into a varta.Observer on a temporary Unix
socket: the observer must report a Beat with this process's pid, the status
and payload sent, and a kernel-attested origin. Also checks the console
scripts' --version and that the secure transport seals. Exits non-zero on
any failure; prints one summary line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> int:
    import varta

    expected = sys.argv[1] if len(sys.argv) > 1 else None
    if expected is not None and varta.__version__ != expected:
        print(f"FAIL: varta.__version__ {varta.__version__} != {expected}")
        return 1
    tmp = tempfile.mkdtemp(prefix="varta-smoke-")
    try:
        sock = os.path.join(tmp, "obs.sock")
        with varta.Observer(sock, threshold_ms=5000) as obs:
            with varta.Varta.connect(sock) as agent:
                outcome = agent.beat(varta.Status.OK, payload=4242)
                if not outcome:
                    print(f"FAIL: beat not sent: {outcome!r}")
                    return 1
            beat = None
            deadline = time.monotonic() + 5.0
            while beat is None and time.monotonic() < deadline:
                for event in obs.poll(timeout=0.2):
                    if isinstance(event, varta.Beat) and event.pid == os.getpid():
                        beat = event
                        break
            if beat is None:
                print("FAIL: the observer saw no beat from this process")
                return 1
            if beat.status != varta.Status.OK or beat.payload != 4242:
                print(f"FAIL: wrong beat {beat!r}")
                return 1
            if beat.origin != varta.BeatOrigin.KERNEL_ATTESTED:
                print(f"FAIL: origin {beat.origin!r}, expected KERNEL_ATTESTED")
                return 1
        sealed = varta._varta._testing.seal_shared(
            varta.Key.generate(), bytes(8), 1, varta.encode(varta.Status.OK, 1, 1, 1)
        )
        if len(sealed) != 60:
            print(f"FAIL: sealed frame is {len(sealed)} bytes, expected 60")
            return 1
        bindir = os.path.dirname(sys.executable)
        for cmd in (
            [os.path.join(bindir, "varta-watch"), "--version"],
            [os.path.join(bindir, "varta"), "--version"],
            [sys.executable, "-m", "varta", "--version"],
        ):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if out.returncode != 0 or varta.__version__ not in out.stdout:
                print(f"FAIL: {' '.join(cmd)} -> {out.returncode} {out.stdout!r} {out.stderr!r}")
                return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    py = ".".join(map(str, sys.version_info[:3]))
    print(f"ok: Python {py}, varta {varta.__version__}: beat observed (KERNEL_ATTESTED), seal ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
