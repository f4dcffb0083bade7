"""Secure UDP agent and secure crash hooks, checked with an independent
implementation (`cryptography`'s ChaCha20Poly1305 and HKDF).

Receivers are plain Python UDP sockets on 127.0.0.1. Loopback UDP queues a
datagram synchronously inside ``send``, so after a sender returns (or a child
process exited) its datagrams are in the receive queue.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from typing import Iterator

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import entropy_fault
import varta
from varta import NONCE_TERMINAL, BeatError, Status, Varta

KEY = bytes(range(32))
MASTER = bytes(range(100, 132))
CHILD_TIMEOUT = 60


def agent_key(master: bytes, pid: int) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"varta-agent-v1\0" + struct.pack("<I", pid),
    )
    return hkdf.derive(master)


def open_shared(key: bytes, wire: bytes) -> varta.Frame:
    assert len(wire) == 60
    plain = ChaCha20Poly1305(key).decrypt(wire[0:12], wire[12:60], b"")
    return varta.decode(plain)


def open_master(master: bytes, wire: bytes) -> varta.Frame:
    assert len(wire) == 64
    (pid,) = struct.unpack("<I", wire[0:4])
    plain = ChaCha20Poly1305(agent_key(master, pid)).decrypt(wire[4:16], wire[16:64], wire[0:4])
    frame = varta.decode(plain)
    assert frame.pid == pid
    return frame


def counter(wire: bytes, off: int = 8) -> int:
    (c,) = struct.unpack("<I", wire[off : off + 4])
    return int(c)


class Rx:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.addr: tuple[str, int] = self.sock.getsockname()

    def drain(self) -> list[bytes]:
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096))
        except BlockingIOError:
            pass
        return out

    def wait_drain(self, timeout: float = 10.0) -> list[bytes]:
        self.sock.settimeout(timeout)
        try:
            first = [self.sock.recv(4096)]
        except socket.timeout:
            return []
        return first + self.drain()


@pytest.fixture
def rx() -> Iterator[Rx]:
    r = Rx()
    yield r
    r.sock.close()


# --- agent ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, varta.Key.from_bytes(KEY)], ids=["bytes", "Key"])
def test_shared_frames_open_with_cryptography(rx: Rx, key: object) -> None:
    agent = Varta.connect_secure_udp(rx.addr, key)  # type: ignore[arg-type]
    for i in range(5):
        assert agent.beat(Status.OK, i).is_sent
    wires = rx.drain()
    assert [len(w) for w in wires] == [60] * 5
    frames = [open_shared(KEY, w) for w in wires]
    assert [f.nonce for f in frames] == [1, 2, 3, 4, 5]
    assert [f.payload for f in frames] == [0, 1, 2, 3, 4]
    assert {f.pid for f in frames} == {os.getpid()}
    # AEAD counter: 0, 1, 2, … per sent frame; iv_random fixed per session.
    assert [counter(w) for w in wires] == [0, 1, 2, 3, 4]
    assert len({w[0:8] for w in wires}) == 1

    agent.reconnect()
    assert agent.beat(Status.DEGRADED).is_sent
    (after,) = rx.drain()
    assert after[0:8] != wires[0][0:8]  # fresh salt → fresh prefix
    assert counter(after) == 0
    f = open_shared(KEY, after)
    assert (f.nonce, f.status) == (6, Status.DEGRADED)  # the session continues
    agent.close()


def test_wrong_key_does_not_open(rx: Rx) -> None:
    agent = Varta.connect_secure_udp(rx.addr, KEY)
    assert agent.beat().is_sent
    (wire,) = rx.drain()
    with pytest.raises(InvalidTag):
        ChaCha20Poly1305(bytes(32)).decrypt(wire[0:12], wire[12:60], b"")
    agent.close()


def test_send_terminal_is_sealed(rx: Rx) -> None:
    with Varta.connect_secure_udp(rx.addr, KEY) as agent:
        assert agent.beat().is_sent
        assert agent.send_terminal().is_sent
    wires = rx.drain()
    assert [counter(w) for w in wires] == [0, 1]
    f = open_shared(KEY, wires[1])
    assert (f.status, f.nonce) == (Status.CRITICAL, NONCE_TERMINAL)


def test_master_frames(rx: Rx) -> None:
    agent = Varta.connect_secure_udp_with_master(rx.addr, varta.Key.from_bytes(MASTER))
    for _ in range(3):
        assert agent.beat().is_sent
    wires = rx.drain()
    assert [len(w) for w in wires] == [64] * 3
    assert {struct.unpack("<I", w[0:4])[0] for w in wires} == {os.getpid()}
    frames = [open_master(MASTER, w) for w in wires]
    assert [f.nonce for f in frames] == [1, 2, 3]
    assert [counter(w, 12) for w in wires] == [0, 1, 2]
    # The AAD binds the cleartext pid: changing it breaks the tag.
    w = wires[0]
    forged = struct.pack("<I", os.getpid() ^ 1) + w[4:]
    with pytest.raises(InvalidTag):
        ChaCha20Poly1305(agent_key(MASTER, os.getpid())).decrypt(
            forged[4:16], forged[16:64], forged[0:4]
        )
    agent.close()


@pytest.mark.parametrize(
    "connect", [Varta.connect_secure_udp, Varta.connect_secure_udp_with_master]
)
def test_bad_keys_raise(rx: Rx, connect: object) -> None:
    with pytest.raises(ValueError):
        connect(rx.addr, b"\x00" * 31)  # type: ignore[operator]
    with pytest.raises(ValueError):
        connect(rx.addr, b"\x00" * 33)  # type: ignore[operator]
    with pytest.raises(TypeError):
        connect(rx.addr, "00" * 32)  # type: ignore[operator]
    assert rx.drain() == []


def test_stall_is_invalid_input_and_sends_nothing(rx: Rx) -> None:
    agent = Varta.connect_secure_udp(rx.addr, KEY)
    out = agent.beat(Status.STALL)
    assert out.is_failed
    assert out.error == BeatError(0, "InvalidInput")
    assert agent.beat().is_sent
    (wire,) = rx.drain()
    assert counter(wire) == 0  # the refused beat burned no AEAD counter
    assert open_shared(KEY, wire).nonce == 1
    agent.close()


def beat_until_sent(agent: Varta, tries: int = 100) -> None:
    """A freshly bound receiver may still see one stale ICMP-induced drop."""
    outcomes = []
    for _ in range(tries):
        out = agent.beat()
        if out.is_sent:
            return
        outcomes.append(out)
    raise AssertionError(f"never sent: {outcomes[-3:]}")


def test_dropped_secure_beats_burn_no_counter_and_auto_reconnect_reseals() -> None:
    # A port nobody listens on: loopback turns the ICMP error into
    # ECONNREFUSED on the next send (Dropped: no observer).
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    addr = probe.getsockname()
    probe.close()
    agent = Varta.connect_secure_udp(addr, KEY)
    assert agent.beat().is_sent  # counter 0 committed (the datagram is lost)
    outcomes = [agent.beat() for _ in range(3)]
    assert any(o.is_dropped for o in outcomes), outcomes
    rx = Rx.__new__(Rx)
    rx.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.sock.bind(addr)
    try:
        rx.drain()
        # Dropped beats committed nothing; the next sent beat reuses the slot.
        beat_until_sent(agent)
        wires = rx.drain()
        assert len(wires) == 1
        nsent = 1 + sum(o.is_sent for o in outcomes)
        assert counter(wires[0]) == nsent
        assert open_shared(KEY, wires[0]).nonce == nsent + 1
        prefix = wires[0][0:8]

        # Auto-reconnect: observer gone, one drop triggers a reconnect and
        # the same plaintext is resealed under the new session.
        rx.sock.close()
        agent.set_reconnect_after(1)
        agent.beat()  # may be sent (the ICMP error arrives afterwards)
        out = agent.beat()
        assert not out.is_failed
        rx.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.sock.bind(addr)
        beat_until_sent(agent)
        (last,) = rx.drain()
        assert last[0:8] != prefix  # reconnected: fresh salt
        open_shared(KEY, last)
    finally:
        rx.sock.close()
        agent.close()


def test_repr_names_the_secure_transport(rx: Rx) -> None:
    agent = Varta.connect_secure_udp(rx.addr, KEY)
    assert "secure_udp=127.0.0.1" in repr(agent)
    assert "key=shared" in repr(agent)
    assert KEY.hex() not in repr(agent)
    agent.close()


# --- fork: no (key, nonce) pair ever seen twice ------------------------------------------

BATCH = 100


def _beat_batches(agent: Varta, rx: Rx, n: int, out: list[bytes]) -> None:
    for _ in range(n // BATCH):
        for _ in range(BATCH):
            assert agent.beat().is_sent
        out.extend(rx.drain())


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.mark.timeout(120)
@pytest.mark.parametrize("master", [False, True], ids=["shared", "master"])
def test_forked_child_uses_a_fresh_salt(rx: Rx, master: bool) -> None:
    per_side = 2000
    if master:
        agent = Varta.connect_secure_udp_with_master(rx.addr, MASTER)
    else:
        agent = Varta.connect_secure_udp(rx.addr, KEY)
    wires: list[bytes] = []
    _beat_batches(agent, rx, per_side // 2, wires)

    # Lock-step: the child beats a batch, signals, and waits until the parent
    # drained it, so nothing overflows the receive queue.
    c2p_r, c2p_w = os.pipe()
    p2c_r, p2c_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only beats, reports, and _exits
        code = 1
        try:
            os.close(c2p_r)
            os.close(p2c_w)
            for _ in range(per_side // BATCH):
                for _ in range(BATCH):
                    if not agent.beat().is_sent:
                        raise RuntimeError("child beat not sent")
                os.write(c2p_w, b"b")
                if _read_exact(p2c_r, 1) != b"k":
                    raise RuntimeError("parent went away")
            os.write(c2p_w, b"F" + struct.pack("<Q", agent.fork_recoveries()))
            code = 0
        finally:
            os._exit(code)
    os.close(c2p_w)
    os.close(p2c_r)
    try:
        for _ in range(per_side // BATCH):
            assert _read_exact(c2p_r, 1) == b"b"
            wires.extend(rx.drain())
            os.write(p2c_w, b"k")
        report = _read_exact(c2p_r, 9)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(c2p_r)
        os.close(p2c_w)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert report[:1] == b"F"
    assert struct.unpack("<Q", report[1:])[0] == 1  # child's fork_recoveries()

    _beat_batches(agent, rx, per_side // 2, wires)
    assert agent.fork_recoveries() == 0

    assert len(wires) == 2 * per_side
    seen: set[tuple[bytes, bytes]] = set()
    by_pid: dict[int, list[int]] = {}
    for w in wires:
        if master:
            (wpid,) = struct.unpack("<I", w[0:4])
            key_id, nonce = agent_key(MASTER, wpid), w[4:16]
            f = open_master(MASTER, w)
        else:
            key_id, nonce = KEY, w[0:12]
            f = open_shared(KEY, w)
        assert (key_id, nonce) not in seen, "AEAD nonce reused"
        seen.add((key_id, nonce))
        by_pid.setdefault(f.pid, []).append(f.nonce)
    assert set(by_pid) == {os.getpid(), pid}
    assert by_pid[pid] == list(range(1, per_side + 1))  # child session restarts at 1
    assert by_pid[os.getpid()] == list(range(1, per_side + 1))
    agent.close()


# --- secure crash hooks -----------------------------------------------------------------


def run_child(code: str) -> tuple[int, int, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, err = proc.communicate(timeout=CHILD_TIMEOUT)
    return proc.pid, proc.returncode, err


CRASHES = {
    "exception": ("raise RuntimeError('boom')", 1),
    "segv": ("import ctypes; ctypes.string_at(0)", -signal.SIGSEGV),
}


@pytest.mark.parametrize("crash", sorted(CRASHES))
@pytest.mark.parametrize("master", [False, True], ids=["shared", "master"])
def test_secure_crash_hook_sends_one_sealed_terminal_frame(
    rx: Rx, crash: str, master: bool
) -> None:
    body, want_rc = CRASHES[crash]
    installer = (
        "install_excepthook_secure_udp_master" if master else "install_excepthook_secure_udp"
    )
    key = MASTER if master else KEY
    pid, rc, err = run_child(
        f"""
        import os, signal
        import varta, varta.panic
        varta.panic.{installer}(("127.0.0.1", {rx.addr[1]}), bytes.fromhex("{key.hex()}"))
        {body}
        """
    )
    assert rc == want_rc, err[-2000:]
    wires = rx.wait_drain()
    assert len(wires) == 1, wires
    (wire,) = wires
    if master:
        assert len(wire) == 64
        assert struct.unpack("<I", wire[0:4])[0] == pid
        f = open_master(MASTER, wire)
        assert counter(wire, 12) == 0
    else:
        f = open_shared(KEY, wire)
        assert counter(wire) == 0
    assert (f.status, f.nonce, f.pid) == (Status.CRITICAL, NONCE_TERMINAL, pid)
    assert varta.terminal_cause(f.payload) != "clean_exit"
    assert f.timestamp >= 1


def test_secure_crash_frames_use_distinct_nonces_per_firing(rx: Rx) -> None:
    _, rc, err = run_child(
        f"""
        import varta, varta.panic
        varta.panic.install_excepthook_secure_udp(("127.0.0.1", {rx.addr[1]}),
                                                  varta.Key.from_hex("{KEY.hex()}"))
        for _ in range(3):
            assert varta.panic.fire()
        """
    )
    assert rc == 0, err[-2000:]
    wires = rx.wait_drain()
    assert len(wires) == 3
    assert [counter(w) for w in wires] == [0, 1, 2]
    assert len({w[0:12] for w in wires}) == 3
    stamps = [open_shared(KEY, w).timestamp for w in wires]
    assert stamps == sorted(set(stamps))


def test_secure_crash_install_errors(rx: Rx) -> None:
    from varta.panic import SocketBind

    with pytest.raises(ValueError):
        varta.panic.install_excepthook_secure_udp(rx.addr, b"\x00" * 31)
    with pytest.raises(ValueError):
        varta.panic.install_excepthook_secure_udp_master(rx.addr, b"\x00" * 31)
    with pytest.raises(SocketBind):
        varta.panic.install_excepthook_secure_udp(("no-such-host.invalid", 1), KEY)


# --- OS entropy unavailable -------------------------------------------------------------

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SECCOMP_REFUSED = 77


@pytest.mark.skipif(
    not entropy_fault.supported(), reason="getrandom(2) fault injection needs Linux x86_64/aarch64"
)
def test_without_os_entropy_secure_setup_fails_closed(rx: Rx) -> None:
    # A child whose getrandom(2) fails with EIO (seccomp) after it connected a
    # secure agent and installed a plaintext crash hook.
    plain = Rx()
    try:
        pid, rc, err = run_child(
            f"""
            import errno, sys
            sys.path.insert(0, {TESTS_DIR!r})
            import varta, varta.panic
            from varta import Status
            from entropy_fault import deny_getrandom

            key = bytes.fromhex("{KEY.hex()}")
            secure = ("127.0.0.1", {rx.addr[1]})
            agent = varta.Varta.connect_secure_udp(secure, key)
            assert agent.beat(Status.OK).is_sent
            varta.panic.install_excepthook_udp(("127.0.0.1", {plain.addr[1]}))
            hook = sys.excepthook
            try:
                deny_getrandom()
            except OSError:
                sys.exit({SECCOMP_REFUSED})

            for install in (varta.panic.install_excepthook_secure_udp,
                            varta.panic.install_excepthook_secure_udp_master):
                try:
                    install(secure, key)
                except varta.panic.EntropyUnavailable as e:
                    assert isinstance(e, varta.panic.PanicInstallError)
                    assert "entropy unavailable" in str(e), e
                else:
                    raise AssertionError(f"{{install.__name__}} installed without entropy")
                assert sys.excepthook is hook

            for connect in (varta.Varta.connect_secure_udp,
                            varta.Varta.connect_secure_udp_with_master):
                try:
                    connect(secure, key)
                except OSError as e:
                    assert e.errno == errno.EIO, e
                else:
                    raise AssertionError(f"{{connect.__name__}} connected without a salt")

            try:
                varta.Key.generate()
            except OSError as e:
                assert "os error 5" in str(e), e
            else:
                raise AssertionError("Key.generate without entropy")

            # Reconnect needs a fresh salt: it fails and keeps the old session.
            try:
                agent.reconnect()
            except OSError as e:
                assert e.errno == errno.EIO, e
            else:
                raise AssertionError("reconnected without a salt")
            assert agent.beat(Status.DEGRADED).is_sent

            # The previously installed (plaintext) crash target is still active.
            assert varta.panic.fire()
            """
        )
        if rc == SECCOMP_REFUSED:
            pytest.skip("the kernel refused the seccomp filter")
        assert rc == 0, err[-3000:]
        wires = rx.drain()
        assert [len(w) for w in wires] == [60, 60]
        frames = [open_shared(KEY, w) for w in wires]
        assert [(f.pid, f.nonce, f.status) for f in frames] == [
            (pid, 1, Status.OK),
            (pid, 2, Status.DEGRADED),
        ]
        # Same session after the failed reconnect: same prefix, next counter.
        assert wires[0][0:8] == wires[1][0:8]
        assert [counter(w) for w in wires] == [0, 1]
        (crash,) = plain.wait_drain()
        f = varta.decode(crash)
        assert (f.pid, f.nonce, f.status) == (pid, NONCE_TERMINAL, Status.CRITICAL)
    finally:
        plain.sock.close()
