"""Beat cost benchmark (printed, not a test).

Median ns per call, in one run, for:

* ``ours``     — ``varta.Varta.beat`` (this package; build with ``maturin develop --release``)
* ``floor``    — Python ``socket.send`` of a prebuilt 32-byte frame on a connected UDS
                 socket: the cost any Python caller pays for one datagram
* ``udp``      — ``Varta.connect_udp(...).beat`` (plaintext UDP to 127.0.0.1)
* ``secure``   — ``Varta.connect_secure_udp(...).beat`` (60-byte ChaCha20-Poly1305 frames)
* ``master``   — ``Varta.connect_secure_udp_with_master(...).beat`` (64-byte frames)
* ``udp_floor``— Python ``socket.send`` of a prebuilt 32-byte frame on a connected UDP socket
* ``pure``     — a pure-Python agent: ``struct`` + table CRC-32C encode, then ``send``
* ``progress`` — ``varta.Heartbeat.progress()``, the hot-loop call of a progress-gated
                 heartbeat (one atomic add; its own thread does the sends). Timed as
                 plain loops of ``--loop`` calls (no send to check), minus the empty
                 loop; also checked for allocations over 10⁶ calls with ``tracemalloc``
                 (its peak catches an object made and freed within a call) and
                 ``sys.getallocatedblocks``, against the same loop calling nothing
* ``upstream`` — upstream ``varta`` 0.2.0's ``Varta.beat``, run in a side venv
                 (``.venv-upstream`` at the repo root, as ``scripts/test.sh`` keeps it;
                 created with ``pip install varta==0.2.0`` if missing)

Method. Linux queues at most ``net.unix.max_dgram_qlen`` (10) datagrams per
Unix datagram receiver, so a free-running sender mostly measures the
``EAGAIN`` path. Instead every variant sends bursts of ``--burst`` (8) frames
into an empty queue and only the burst is timed; between bursts the same
thread drains the receiving socket (untimed) and checks that every frame of
the burst arrived, so every timed call is a real, successful send and no
cross-process wake-up noise enters the figures. Per call = (median burst
time - median empty-burst time) / burst. Variants run in several interleaved
passes, so machine load hits them alike.

Also checked (not timed): frames from upstream 0.2.0's client decode with our
``varta.decode`` and re-encode byte for byte, and upstream's decoder accepts
ours.

    python bench/beat.py [--rounds N] [--burst B] [--passes P] [--loop L] [--no-upstream]
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any, Callable

HERE = os.path.abspath(__file__)
# The side venv scripts/test.sh keeps (created here too if missing).
UPSTREAM_VENV = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".venv-upstream")
UPSTREAM_REQ = "varta==0.2.0"


# --- harness (also runs under the upstream venv's interpreter) -------------------------


class Receiver:
    """The bench's observer stand-in: a UDS datagram socket drained in-thread."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.buf = bytearray(64)

    def drain(self) -> int:
        n = 0
        recv_into = self.sock.recv_into
        try:
            while True:
                if recv_into(self.buf) != 32:
                    raise SystemExit("unexpected datagram length")
                n += 1
        except BlockingIOError:
            return n


class UdpReceiver(Receiver):
    """The same, over UDP on 127.0.0.1, for frames of one expected length."""

    def __init__(self, expect: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.buf = bytearray(128)
        self.expect = expect
        self.addr = self.sock.getsockname()

    def drain(self) -> int:
        n = 0
        recv_into = self.sock.recv_into
        try:
            while True:
                if recv_into(self.buf) != self.expect:
                    raise SystemExit("unexpected datagram length")
                n += 1
        except BlockingIOError:
            return n


def timed_bursts(
    call: Callable[[], Any] | None, rounds: int, burst: int, rx: Receiver
) -> list[int]:
    """Per-round ns for `burst` calls of `call` (None = the empty loop)."""
    pc = time.perf_counter_ns
    rng = range(burst)
    out = []
    rx.drain()
    gc.disable()
    try:
        for _ in range(rounds):
            if call is None:
                t0 = pc()
                for _ in rng:
                    pass
                t1 = pc()
            else:
                t0 = pc()
                for _ in rng:
                    call()
                t1 = pc()
                got = rx.drain()
                if got != burst:
                    raise SystemExit(f"{got}/{burst} frames of a burst arrived: a send was dropped")
            out.append(t1 - t0)
    finally:
        gc.enable()
    return out


def timed_loops(call: Callable[[], Any] | None, rounds: int, n: int) -> list[int]:
    """Per-round ns for `n` calls of `call` (None = the empty loop); no send to check."""
    pc = time.perf_counter_ns
    out = []
    gc.disable()
    try:
        for _ in range(rounds):
            if call is None:
                t0 = pc()
                for _ in itertools.repeat(None, n):
                    pass
                t1 = pc()
            else:
                t0 = pc()
                for _ in itertools.repeat(None, n):
                    call()
                t1 = pc()
            out.append(t1 - t0)
    finally:
        gc.enable()
    return out


def allocations(call: Callable[[], Any], n: int) -> tuple[int, int, int]:
    """(net bytes, peak bytes, net blocks) over `n` calls, as tracemalloc sees them."""
    tracemalloc.start()
    try:
        for _ in itertools.repeat(None, 1000):
            call()
        blocks = sys.getallocatedblocks()
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in itertools.repeat(None, n):
            call()
        after, peak = tracemalloc.get_traced_memory()
        return after - before, peak - before, sys.getallocatedblocks() - blocks
    finally:
        tracemalloc.stop()


def upstream_worker_main(rounds: int, burst: int) -> None:
    """Runs in the upstream venv: time upstream Varta.beat with the same harness."""
    import varta  # upstream 0.2.0

    assert varta.__version__ == "0.2.0", varta.__version__
    tmp = tempfile.mkdtemp(prefix="varta-bench-up-")
    try:
        path = os.path.join(tmp, "bench.sock")
        rx = Receiver(path)
        agent = varta.Varta.connect(path)
        call = functools.partial(agent.beat, varta.Status.OK)
        empty = timed_bursts(None, rounds, burst, rx)
        samples = timed_bursts(call, rounds, burst, rx)
        agent.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    json.dump({"samples": samples, "empty": empty}, sys.stdout)


def upstream_frames_main(path: str) -> None:
    """Runs in the upstream venv: send a few beats of every status to `path`."""
    import varta

    with varta.Varta.connect(path) as agent:
        for status, payload in (("ok", 0), ("degraded", 7), ("critical", 2**32 - 1), (0, 1)):
            assert agent.beat(status, payload).is_sent
    print(os.getpid())


def upstream_decode_main(hexes: list[str]) -> None:
    """Runs in the upstream venv: decode frames with upstream's decoder."""
    from varta import _vlp

    out = []
    for h in hexes:
        f = _vlp.decode(bytes.fromhex(h))
        out.append([int(f.status), f.pid, f.timestamp, f.nonce, f.payload])
    json.dump(out, sys.stdout)


# --- variants in this process ---------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def pure_crc32c(data: bytes | bytearray | memoryview) -> int:
    crc = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class PureAgent:
    """What a pure-Python agent does per beat: pid, clock, encode, CRC, send."""

    _HEAD = struct.Struct("<2sBBIQQI")
    _CRC = struct.Struct("<I")

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(path)
        self.buf = bytearray(32)
        self.view = memoryview(self.buf)
        self.start = time.monotonic_ns()
        self.nonce = 0

    def beat(self, status: int = 0, payload: int = 0) -> bool:
        nonce = self.nonce + 1
        ts = time.monotonic_ns() - self.start
        self._HEAD.pack_into(self.buf, 0, b"VA", 2, status, os.getpid(), ts, nonce, payload)
        self._CRC.pack_into(self.buf, 28, pure_crc32c(self.view[:28]))
        sent = self.sock.send(self.buf) == 32
        if sent:
            self.nonce = nonce
        return sent


def ensure_upstream_venv() -> str | None:
    py = os.path.join(UPSTREAM_VENV, "bin", "python")
    probe = [py, "-c", "import varta; assert varta.__version__ == '0.2.0'"]
    if os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating {UPSTREAM_VENV} with {UPSTREAM_REQ} ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", UPSTREAM_VENV], check=True)
        subprocess.run(
            [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", UPSTREAM_REQ],
            check=True,
        )
        subprocess.run(probe, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"upstream venv unavailable: {e}", file=sys.stderr)
        return None
    return py


def check_upstream_interop(upy: str, tmp: str) -> str:
    """Upstream frames decode with ours byte for byte, and the other way round."""
    import varta

    path = os.path.join(tmp, "interop.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(30)
    try:
        out = subprocess.run(
            [upy, HERE, "--upstream-frames", path],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        pid = int(out.stdout.strip())
        expected = [
            (varta.Status.OK, 0),
            (varta.Status.DEGRADED, 7),
            (varta.Status.CRITICAL, 2**32 - 1),
            (varta.Status.OK, 1),
        ]
        for nonce, (status, payload) in enumerate(expected, start=1):
            data = rx.recv(64)
            f = varta.decode(data)
            assert (f.status, f.pid, f.nonce, f.payload) == (status, pid, nonce, payload), f
            assert f.encode() == data, "re-encode differs"
        # Ours → upstream's decoder.
        with varta.Varta.connect(path) as agent:
            agent.beat(varta.Status.DEGRADED, 5)
            agent.send_terminal()
        ours = [rx.recv(64) for _ in range(2)]
    finally:
        rx.close()
    decoded = subprocess.run(
        [upy, HERE, "--upstream-decode", *(d.hex() for d in ours)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for data, fields in zip(ours, json.loads(decoded.stdout)):
        assert list(fields) == list(_fields(varta.decode(data))), (fields, data.hex())
    return "upstream 0.2.0 frames decode with varta.decode (4/4, byte-exact); ours decode upstream"


def _fields(f: Any) -> tuple[int, int, int, int, int]:
    return (int(f.status), f.pid, f.timestamp, f.nonce, f.payload)


# --- driver ---------------------------------------------------------------------------


def per_call(samples: list[int], empty: list[int], burst: int) -> float:
    return (statistics.median(samples) - statistics.median(empty)) / burst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1500, help="bursts per variant per pass")
    ap.add_argument("--burst", type=int, default=8, help="sends per timed burst (< 10)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--loop", type=int, default=1000, help="progress() calls per timed loop")
    ap.add_argument("--no-upstream", action="store_true")
    args = ap.parse_args(argv)

    import varta

    tmp = tempfile.mkdtemp(prefix="varta-bench-")
    path = os.path.join(tmp, "bench.sock")
    try:
        rx = Receiver(path)
        agent = varta.Varta.connect(path)
        floor_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        floor_sock.setblocking(False)
        floor_sock.connect(path)
        frame = varta.encode(varta.Status.OK, os.getpid(), 1, 1, 0)
        pure = PureAgent(path)
        assert pure_crc32c(b"123456789") == varta.crc32c(b"123456789") == 0xE3069283
        pure.beat(0)
        assert varta.decode(rx.sock.recv(64)).nonce == 1, "pure-Python encoder is wrong"

        # The heartbeat beats to a receiver of its own (never drained: its
        # beats do not disturb the burst checks; once full they are dropped).
        hb_rx = Receiver(os.path.join(tmp, "hb.sock"))
        hb = varta.Heartbeat.connect(os.path.join(tmp, "hb.sock"), interval_ms=1000)

        udp_rx, sec_rx, mas_rx = UdpReceiver(32), UdpReceiver(60), UdpReceiver(64)
        udp_agent = varta.Varta.connect_udp(udp_rx.addr)
        sec_agent = varta.Varta.connect_secure_udp(sec_rx.addr, varta.Key.generate())
        mas_agent = varta.Varta.connect_secure_udp_with_master(mas_rx.addr, varta.Key.generate())
        udp_floor = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_floor.setblocking(False)
        udp_floor.connect(udp_rx.addr)

        variants: dict[str, Callable[[], Any]] = {
            "ours": functools.partial(agent.beat, varta.Status.OK),
            "floor": functools.partial(floor_sock.send, frame),
            "pure": functools.partial(pure.beat, 0),
            "udp": functools.partial(udp_agent.beat, varta.Status.OK),
            "secure": functools.partial(sec_agent.beat, varta.Status.OK),
            "master": functools.partial(mas_agent.beat, varta.Status.OK),
            "udp_floor": functools.partial(udp_floor.send, frame),
        }
        receivers: dict[str, Receiver] = {
            "udp": udp_rx,
            "secure": sec_rx,
            "master": mas_rx,
            "udp_floor": udp_rx,
        }
        upy = None if args.no_upstream else ensure_upstream_venv()
        interop = check_upstream_interop(upy, tmp) if upy else "upstream: skipped"

        samples: dict[str, list[int]] = {k: [] for k in [*variants, "upstream"]}
        empties: dict[str, list[int]] = {k: [] for k in samples}
        prog_samples: list[int] = []
        prog_empty: list[int] = []
        for _ in range(args.passes):
            prog_empty += timed_loops(None, args.rounds, args.loop)
            prog_samples += timed_loops(hb.progress, args.rounds, args.loop)
            for name, call in variants.items():
                vrx = receivers.get(name, rx)
                empties[name] += timed_bursts(None, args.rounds, args.burst, vrx)
                samples[name] += timed_bursts(call, args.rounds, args.burst, vrx)
            if upy:
                res = subprocess.run(
                    [
                        upy,
                        HERE,
                        "--upstream-worker",
                        str(args.rounds),
                        str(args.burst),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                )
                data = json.loads(res.stdout)
                samples["upstream"] += data["samples"]
                empties["upstream"] += data["empty"]
        alloc_n = 1_000_000
        alloc_base = allocations(int, alloc_n)  # int() returns the cached 0
        alloc_prog = allocations(hb.progress, alloc_n)
        hb_calls = hb.progress_count
        hb.close()
        hb_rx.sock.close()
        agent.close()
        for a in (udp_agent, sec_agent, mas_agent):
            a.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ns = {k: per_call(samples[k], empties[k], args.burst) for k in samples if samples[k]}
    ns["progress"] = per_call(prog_samples, prog_empty, args.loop)
    n = len(samples["ours"]) * args.burst
    print(
        f"varta {varta.__version__} | Python {sys.version.split()[0]} | "
        f"{os.cpu_count()} CPUs | load {os.getloadavg()[0]:.1f} | "
        f"{n} calls per variant in bursts of {args.burst}"
    )
    labels = {
        "ours": "Varta.beat (this package)",
        "floor": "socket.send of a prebuilt frame",
        "pure": "pure-Python encode + send",
        "upstream": "upstream varta 0.2.0 beat",
        "udp": "Varta.beat over UDP",
        "secure": "Varta.beat over secure UDP (shared)",
        "master": "Varta.beat over secure UDP (master)",
        "udp_floor": "socket.send on a connected UDP socket",
        "progress": "Heartbeat.progress()",
    }
    for k, v in ns.items():
        print(f"  {labels[k]:<34} {v:8.0f} ns/call")
    print(f"  ratio ours/floor      {ns['ours'] / ns['floor']:6.2f}  (target <= 1.10)")
    print(f"  ratio pure/ours       {ns['pure'] / ns['ours']:6.2f}")
    print(f"  ratio udp/udp_floor   {ns['udp'] / ns['udp_floor']:6.2f}")
    print(f"  ratio secure/udp      {ns['secure'] / ns['udp']:6.2f}  (target <= 1.3)")
    print(f"  ratio master/udp      {ns['master'] / ns['udp']:6.2f}")
    if "upstream" in ns:
        print(f"  ratio upstream/ours   {ns['upstream'] / ns['ours']:6.2f}  (target >= 4)")
    print(
        f"  ratio progress/floor  {ns['progress'] / ns['floor']:6.3f}  (target <= 0.05); "
        f"{len(prog_samples) * args.loop} progress() calls in loops of {args.loop}"
    )
    net, peak, blocks = (p - b for p, b in zip(alloc_prog, alloc_base))
    verdict = "none" if (net, peak, blocks) == (0, 0, 0) else "SOME"
    print(
        f"  progress() allocations over {alloc_n:,} calls: {verdict} "
        f"(vs the empty call: net {net} B, peak {peak} B, {blocks} blocks; "
        f"{hb_calls:,} calls counted)"
    )
    print(f"  {interop}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--upstream-worker":
        upstream_worker_main(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--upstream-frames":
        upstream_frames_main(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--upstream-decode":
        upstream_decode_main(sys.argv[2:])
    else:
        sys.exit(main())
