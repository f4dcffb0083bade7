"""UDP listeners of varta.Observer: plaintext and secure frames.

Secure frames are sealed here with `cryptography` (ChaCha20-Poly1305, HKDF)
as an independent implementation of docs/protocol.md#secure-transport: nonce = iv_random(8) ||
u32le(counter); shared wire = nonce || ct||tag (empty AAD); master wire =
pid LE(4) || nonce || ct||tag with AAD = wire[0:4] and the agent key
HKDF-SHA256(master, salt=None, info=b"varta-agent-v1\\0" + pid LE).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import varta
from observer_helpers import poll_until
from varta import BeatOrigin, Status
from varta.watch.config import parse_args
from varta.watch.loop import Daemon
from watch_e2e import RECORDER_CODE, WATCH_CMD, Watch, audit_rows, tsv_rows
from watch_e2e import wait_for as e2e_wait

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
MASTER = bytes(range(200, 232))

# Small pids below any pid_max; these processes need not exist (network
# origins are not read from /proc).
PID = 4242


def vkey(raw: bytes) -> varta.Key:
    return varta.Key.from_hex(raw.hex())


def plain(pid: int, nonce: int, *, status: int = 0, payload: int = 0) -> bytes:
    return varta.encode(status, pid, nonce, nonce, payload)


def seal_shared(key: bytes, iv: bytes, counter: int, pt: bytes) -> bytes:
    nonce = iv + struct.pack("<I", counter)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, pt, b"")


def agent_key(master: bytes, pid: int) -> bytes:
    hk = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"varta-agent-v1\0" + struct.pack("<I", pid),
    )
    return hk.derive(master)


def seal_master(master: bytes, pid: int, iv: bytes, counter: int, pt: bytes) -> bytes:
    head = struct.pack("<I", pid)
    nonce = iv + struct.pack("<I", counter)
    return head + nonce + ChaCha20Poly1305(agent_key(master, pid)).encrypt(nonce, pt, head)


@pytest.fixture
def tx() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        yield s
    finally:
        s.close()


def make(**kw: Any) -> varta.Observer:
    kw.setdefault("max_beat_rate", 0)
    threshold = kw.pop("threshold_ms", 10_000)
    return varta.Observer(None, threshold, udp_port=0, **kw)


def wait_counter(obs: varta.Observer, name: str, value: int, *, within: float = 5.0) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        list(obs.poll(timeout=0.05))
        if obs.counters()[name] == value:
            return
    raise AssertionError(f"{name} = {obs.counters()[name]}, wanted {value}")


def send(tx: socket.socket, obs: varta.Observer, data: bytes) -> None:
    assert obs.udp_address is not None
    tx.sendto(data, obs.udp_address)


def beat_for(pid: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, varta.Beat) and e.pid == pid


# ------------------------------------------------------------ arguments


def test_udp_address_and_defaults() -> None:
    with make(plaintext_udp=True) as obs:
        host, port = obs.udp_address or ("", 0)
        assert host == "0.0.0.0" and port > 0
    with make(keys=[vkey(KEY_A)]) as obs:
        assert obs.udp_address is not None
        assert obs.udp_address[0] == "127.0.0.1"
    with varta.Observer(None, 100) as obs:
        assert obs.udp_address is None


def test_bad_udp_arguments() -> None:
    with pytest.raises(ValueError, match="plaintext_udp=True"):
        varta.Observer(None, 100, udp_port=0)
    with pytest.raises(ValueError, match="need udp_port"):
        varta.Observer(None, 100, keys=[vkey(KEY_A)])
    with pytest.raises(ValueError, match="exclusive"):
        varta.Observer(None, 100, udp_port=0, keys=[vkey(KEY_A)], plaintext_udp=True)
    with pytest.raises(ValueError, match="udp_trust"):
        varta.Observer(None, 100, udp_port=0, plaintext_udp=True, udp_trust="yes")
    with pytest.raises(ValueError, match="not an IP"):
        varta.Observer(None, 100, udp_port=0, plaintext_udp=True, udp_bind_addr="localhost")
    with pytest.raises(ValueError, match="too many shared keys"):
        varta.Observer(None, 100, udp_port=0, keys=[vkey(bytes([i]) * 32) for i in range(9)])
    with pytest.raises(TypeError):
        varta.Observer(None, 100, udp_port=0, keys="00" * 32)


def reference_rcvbuf(request: int) -> int:
    """SO_RCVBUF the kernel reports for a fresh UDP socket given `request`
    (0 = none): what the listener must end up with for the same request."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if request:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, request)
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_udp_rcvbuf_request_reaches_the_socket() -> None:
    # Default: the same 1 MiB request as the Unix listener.
    with make(plaintext_udp=True) as obs:
        assert obs.udp_rcvbuf_bytes == reference_rcvbuf(1_048_576)
    for request in (0, 4096, 65_536):
        with make(keys=[vkey(KEY_A)], udp_rcvbuf_bytes=request) as obs:
            assert obs.udp_rcvbuf_bytes == reference_rcvbuf(request), request
    with varta.Observer(None, 100) as obs:
        assert obs.udp_rcvbuf_bytes is None
    with pytest.raises(ValueError, match="udp_rcvbuf_bytes"):
        make(plaintext_udp=True, udp_rcvbuf_bytes=2**31)
    with pytest.raises(OverflowError):
        make(plaintext_udp=True, udp_rcvbuf_bytes=-1)


def test_port_in_use_raises_oserror() -> None:
    with make(plaintext_udp=True, udp_bind_addr="127.0.0.1") as a:
        assert a.udp_address is not None
        with pytest.raises(OSError):
            varta.Observer(
                None, 100, udp_port=a.udp_address[1], plaintext_udp=True, udp_bind_addr="127.0.0.1"
            )


# ------------------------------------------------------------ accepted


def test_plaintext_beat_is_network_unverified(tx: socket.socket) -> None:
    with make(plaintext_udp=True, udp_bind_addr="127.0.0.1") as obs:
        send(tx, obs, plain(PID, 1, payload=9))
        ev = next(e for e in poll_until(obs, beat_for(PID)) if beat_for(PID)(e))
        assert ev.origin is BeatOrigin.NETWORK_UNVERIFIED
        assert ev.payload == 9 and ev.pid_ns_inode is None
        info = obs.agent(PID)
        assert info is not None and info.origin is BeatOrigin.NETWORK_UNVERIFIED


def test_plaintext_wrong_lengths_are_truncated(tx: socket.socket) -> None:
    with make(plaintext_udp=True, udp_bind_addr="127.0.0.1") as obs:
        send(tx, obs, plain(PID, 1)[:31])
        send(tx, obs, plain(PID, 1) + b"\0")
        wait_counter(obs, "truncated_datagrams", 2)
        assert obs.agents() == []


def test_plaintext_pid_above_pid_max_is_dropped(tx: socket.socket) -> None:
    with make(plaintext_udp=True, udp_bind_addr="127.0.0.1") as obs:
        pid_max = obs.counters()["pid_max_current"]
        assert isinstance(pid_max, int)
        send(tx, obs, plain(pid_max + 1, 1))
        wait_counter(obs, "frame_rejected_pid_above_max", 1)
        assert obs.agents() == []


@pytest.mark.parametrize("trust", ["untrusted", "operator"])
def test_shared_and_master_frames_are_accepted(tx: socket.socket, trust: str) -> None:
    want = (
        BeatOrigin.OPERATOR_ATTESTED_TRANSPORT
        if trust == "operator"
        else BeatOrigin.NETWORK_UNVERIFIED
    )
    with make(keys=[vkey(KEY_A)], master_key=vkey(MASTER), udp_trust=trust) as obs:
        send(tx, obs, seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 1, payload=5)))
        send(tx, obs, seal_master(MASTER, PID + 1, os.urandom(8), 1, plain(PID + 1, 1)))
        seen = poll_until(obs, beat_for(PID + 1))
        beats = {e.pid: e for e in seen if isinstance(e, varta.Beat)}
        assert set(beats) == {PID, PID + 1}
        assert all(b.origin is want for b in beats.values())
        assert beats[PID].payload == 5
        c = obs.counters()
        # shared frame: 1 trial; master-length frame: 1 shared + 1 master trial.
        assert c["secure_aead_attempts"] == 3
        assert c["frame_decrypt_failures"] == 0


def test_accepted_key_works_for_rotation(tx: socket.socket) -> None:
    with make(keys=[vkey(KEY_A), vkey(KEY_B)]) as obs:
        send(tx, obs, seal_shared(KEY_B, os.urandom(8), 1, plain(PID, 1)))
        poll_until(obs, beat_for(PID))


def test_authenticated_bad_frame_is_a_decode_event(tx: socket.socket) -> None:
    bad = bytearray(plain(PID, 1))
    bad[0] ^= 0xFF  # magic
    with make(keys=[vkey(KEY_A)]) as obs:
        send(tx, obs, seal_shared(KEY_A, os.urandom(8), 1, bytes(bad)))
        seen = poll_until(obs, lambda e: isinstance(e, varta.Decode))
        assert not any(isinstance(e, varta.Beat) for e in seen)
        errs = obs.counters()["decode_errors"]
        assert isinstance(errs, dict) and sum(errs.values()) == 1
        assert obs.agents() == []


# ------------------------------------------------------------ rejected


def test_tampered_byte_is_refused(tx: socket.socket) -> None:
    wire = bytearray(seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 1)))
    wire[20] ^= 1
    with make(keys=[vkey(KEY_A)]) as obs:
        send(tx, obs, bytes(wire))
        wait_counter(obs, "frame_decrypt_failures", 1)
        assert obs.agent(PID) is None


def test_wrong_key_is_refused(tx: socket.socket) -> None:
    with make(keys=[vkey(KEY_A)], master_key=vkey(MASTER)) as obs:
        send(tx, obs, seal_shared(KEY_B, os.urandom(8), 1, plain(PID, 1)))
        send(tx, obs, seal_master(KEY_B, PID, os.urandom(8), 1, plain(PID, 1)))
        wait_counter(obs, "frame_decrypt_failures", 2)
        assert obs.agents() == []


def test_master_frame_with_foreign_wire_pid_is_refused(tx: socket.socket) -> None:
    # Sealed for PID+1's key but carrying PID inside: the inner pid must match.
    with make(master_key=vkey(MASTER)) as obs:
        send(tx, obs, seal_master(MASTER, PID + 1, os.urandom(8), 1, plain(PID, 1)))
        wait_counter(obs, "frame_decrypt_failures", 1)
        assert obs.agents() == []


def test_replayed_datagram_is_refused(tx: socket.socket) -> None:
    wire = seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 1))
    with make(keys=[vkey(KEY_A)]) as obs:
        send(tx, obs, wire)
        poll_until(obs, beat_for(PID))
        send(tx, obs, wire)
        wait_counter(obs, "secure_replay_refused", 1)
        info = obs.agent(PID)
        assert info is not None and info.beats == 1


def test_truncated_secure_datagram_is_counted(tx: socket.socket) -> None:
    wire = seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 1))
    with make(keys=[vkey(KEY_A)]) as obs:
        send(tx, obs, wire[:59])
        send(tx, obs, wire + b"\0" * 6)  # 66 bytes: longer than any secure frame
        wait_counter(obs, "truncated_datagrams", 2)
        assert obs.counters()["secure_aead_attempts"] == 0
        assert obs.agents() == []


def test_stale_prefix_is_refused(tx: socket.socket) -> None:
    a, b, c = os.urandom(8), os.urandom(8), os.urandom(8)
    with make(keys=[vkey(KEY_A)]) as obs:
        send(tx, obs, seal_shared(KEY_A, a, 1, plain(PID, 1)))
        send(tx, obs, seal_shared(KEY_A, b, 1, plain(PID, 2)))
        send(tx, obs, seal_shared(KEY_A, c, 1, plain(PID, 3)))
        wait_for_beats(obs, PID, 3)
        # Prefix `a` is two sessions old: a fresh counter under it with an
        # old inner nonce is a replay, not a new session.
        send(tx, obs, seal_shared(KEY_A, a, 2, plain(PID, 1)))
        wait_counter(obs, "secure_replay_refused", 1)
        info = obs.agent(PID)
        assert info is not None and info.beats == 3 and info.last_nonce == 3


def wait_for_beats(obs: varta.Observer, pid: int, n: int) -> None:
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        list(obs.poll(timeout=0.05))
        info = obs.agent(pid)
        if info is not None and info.beats == n:
            return
    raise AssertionError(f"pid {pid} did not reach {n} beats: {obs.agent(pid)!r}")


def test_rotated_out_key_stops_working(tx: socket.socket) -> None:
    with make(keys=[vkey(KEY_A), vkey(KEY_B)]) as obs:
        send(tx, obs, seal_shared(KEY_B, os.urandom(8), 1, plain(PID, 1)))
        poll_until(obs, beat_for(PID))
    # The operator removed KEY_B from the accepted list and restarted.
    with make(keys=[vkey(KEY_A)]) as obs:
        send(tx, obs, seal_shared(KEY_B, os.urandom(8), 1, plain(PID, 2)))
        wait_counter(obs, "frame_decrypt_failures", 1)
        assert obs.agents() == []
        send(tx, obs, seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 3)))
        poll_until(obs, beat_for(PID))


# ------------------------------------------------------------ origins, stalls


def test_udp_only_stall_is_network_unverified(tx: socket.socket) -> None:
    with make(keys=[vkey(KEY_A)], threshold_ms=100) as obs:
        send(tx, obs, seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 1)))
        seen = poll_until(obs, lambda e: isinstance(e, varta.Stall) and e.pid == PID)
        stall = next(e for e in seen if isinstance(e, varta.Stall))
        assert stall.origin is BeatOrigin.NETWORK_UNVERIFIED
        assert not stall.origin.allows_recovery


def test_a_network_frame_never_touches_a_local_agent(tx: socket.socket, tmp_path: Any) -> None:
    """UDS and UDP in one Observer (docs/observer.md#agent-identity): our pid,
    tracked over the Unix socket, and a plaintext UDP frame claiming it are
    two agents — the network one is (127.0.0.1, pid) — so the weaker
    transport can neither refresh nor disturb the kernel-attested agent
    (upstream refused it as an OriginConflict on the shared pid slot)."""
    path = str(tmp_path / "obs.sock")
    pid = os.getpid()
    with varta.Observer(
        path, 10_000, max_beat_rate=0, udp_port=0, plaintext_udp=True, udp_bind_addr="127.0.0.1"
    ) as obs:
        u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            u.sendto(plain(pid, 5), path)
        finally:
            u.close()
        poll_until(obs, beat_for(pid))
        send(tx, obs, plain(pid, 2))
        seen = poll_until(
            obs, lambda e: isinstance(e, varta.Beat) and e.origin is BeatOrigin.NETWORK_UNVERIFIED
        )
        assert not any(isinstance(e, varta.OriginConflict) for e in seen)
        local = obs.agent(pid)
        assert local is not None and local.beats == 1 and local.last_nonce == 5
        assert local.origin is BeatOrigin.KERNEL_ATTESTED and local.peer is None
        remote = obs.agent(pid, peer="127.0.0.1")
        assert remote is not None and remote.beats == 1 and remote.last_nonce == 2
        assert remote.origin is BeatOrigin.NETWORK_UNVERIFIED and remote.peer == "127.0.0.1"
        assert sorted((a.peer or "", a.pid) for a in obs.agents()) == [
            ("", pid),
            ("127.0.0.1", pid),
        ]


# ------------------------------------------------------------ IPv6


@pytest.fixture(scope="module")
def ipv6_loopback() -> str:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"IPv6 loopback (::1) is unavailable on this host: {e}")
    return "::1"


# Frames from a real varta.Varta agent in this process carry our own pid.
PID_SELF = os.getpid()


def agent_beats(seen: list[Any]) -> list[tuple[int, Status, int, int, BeatOrigin]]:
    return [(b.pid, b.status, b.payload, b.nonce, b.origin) for b in seen if beat_for(PID_SELF)(b)]


def is_terminal(e: Any) -> bool:
    return isinstance(e, varta.Beat) and e.nonce == varta.NONCE_TERMINAL


def test_plaintext_udp_over_ipv6(ipv6_loopback: str) -> None:
    with make(plaintext_udp=True, udp_bind_addr=ipv6_loopback) as obs:
        addr = obs.udp_address
        assert addr is not None and addr[0] == "::1" and addr[1] > 0
        with varta.Varta.connect_udp(addr) as agent:
            assert agent.beat("degraded", 3).is_sent
            assert agent.send_terminal().is_sent
        seen = poll_until(obs, is_terminal)
        net = BeatOrigin.NETWORK_UNVERIFIED
        assert agent_beats(seen) == [
            (PID_SELF, Status.DEGRADED, 3, 1, net),
            (PID_SELF, Status.CRITICAL, varta.PAYLOAD_CLEAN_EXIT, varta.NONCE_TERMINAL, net),
        ]


@pytest.mark.parametrize("kind", ["shared", "master"])
def test_secure_udp_over_ipv6(ipv6_loopback: str, kind: str) -> None:
    if kind == "shared":
        obs = make(keys=[vkey(KEY_A)], udp_bind_addr=ipv6_loopback, udp_trust="operator")
    else:
        obs = make(master_key=vkey(MASTER), udp_bind_addr=ipv6_loopback, udp_trust="operator")
    with obs:
        addr = obs.udp_address
        assert addr is not None and addr[0] == "::1"
        if kind == "shared":
            agent = varta.Varta.connect_secure_udp(addr, KEY_A)
        else:
            agent = varta.Varta.connect_secure_udp_with_master(addr, MASTER)
        with agent:
            assert agent.beat(Status.OK, 1).is_sent
            assert agent.beat(Status.DEGRADED, 2).is_sent
            assert agent.send_terminal().is_sent
        seen = poll_until(obs, is_terminal)
        op = BeatOrigin.OPERATOR_ATTESTED_TRANSPORT
        assert agent_beats(seen) == [
            (PID_SELF, Status.OK, 1, 1, op),
            (PID_SELF, Status.DEGRADED, 2, 2, op),
            (PID_SELF, Status.CRITICAL, varta.PAYLOAD_CLEAN_EXIT, varta.NONCE_TERMINAL, op),
        ]
        c = obs.counters()
        assert (c["frame_decrypt_failures"], c["secure_replay_refused"]) == (0, 0)


# ------------------------------------------------------------ daemon (python -m varta watch)


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
    finally:
        s.close()


def key_file(tmp: Path, raw: bytes, name: str = "udp.key") -> Path:
    path = tmp / name
    path.write_text(raw.hex() + "\n")
    path.chmod(0o600)
    return path


def watch_refusal(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*WATCH_CMD, "--socket", str(tmp / "w.sock"), "--threshold-ms", "100", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_watch_refuses_recovery_over_secure_udp_without_the_flag(tmp_path: Path) -> None:
    key = key_file(tmp_path, KEY_A)
    res = watch_refusal(
        tmp_path, "--udp-port", "0", "--key-file", str(key), "--recovery-exec", "/bin/true"
    )
    assert res.returncode == 2, res.stderr
    assert "--secure-udp-i-accept-recovery-on-unauthenticated-transport" in res.stderr


def test_watch_refuses_plaintext_udp_without_the_flag(tmp_path: Path) -> None:
    res = watch_refusal(tmp_path, "--udp-port", "0")
    assert res.returncode == 2, res.stderr
    assert "--i-accept-plaintext-udp" in res.stderr


def test_watch_secure_udp_stall_runs_recovery_when_the_operator_accepts(
    tmp_path: Path,
) -> None:
    """Sealed beats reach the daemon's observer over UDP; with the operator
    flag the listener is operator-attested, so the stall runs recovery."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER_CODE)
    out = tmp_path / "recovered.txt"
    audit, tsv = tmp_path / "audit.log", tmp_path / "events.tsv"
    port = free_udp_port()
    watch = Watch(
        tmp_path,
        "--udp-port", str(port),
        "--key-file", str(key_file(tmp_path, KEY_A)),
        "--secure-udp-i-accept-recovery-on-unauthenticated-transport",
        # network stalls carry no kernel attestation: verdict "unknown"
        "--recovery-on", "hung,unknown",
        "--recovery-exec", f"{sys.executable} {script} {out}",
        "--recovery-audit-file", str(audit),
        "--export-file", str(tsv),
    )  # fmt: skip
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 1)), ("127.0.0.1", port))
        assert e2e_wait("the recovery run", lambda: out.exists() and out.read_text()) == (
            f"{PID}\n"
        )
        e2e_wait(
            "the complete audit row",
            lambda: [r for r in audit_rows(audit) if r[3] == "complete"],
        )
    finally:
        s.close()
        code = watch.stop()
    assert code == 0, watch.stderr
    beats = [r for r in tsv_rows(tsv) if r[1] == "beat" and r[2] == str(PID)]
    assert len(beats) == 1
    rows = audit_rows(audit)
    assert [r[3] for r in rows][:5] == ["boot", "identity", "verdict", "spawn", "complete"]
    # A network agent is named by its sender (docs/observer.md#agent-identity).
    assert rows[1][4:10] == [str(PID), "127.0.0.1", "-", "-", "-", "-"]
    assert rows[2][5] == "unknown"


def test_watch_refuses_recovery_for_a_network_unverified_stall(tmp_path: Path) -> None:
    """Defence in depth: the CLI never pairs recovery with an untrusted UDP
    listener (startup refusal), so the daemon is run in-process with the
    listener's trust forced back to "untrusted"; the NETWORK_UNVERIFIED
    stall of a UDP-only agent must then be refused and audited."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER_CODE)
    out = tmp_path / "recovered.txt"
    audit = tmp_path / "audit.log"
    port = free_udp_port()
    cfg = parse_args([
        "--socket", str(tmp_path / "w.sock"), "--threshold-ms", "100",
        "--read-timeout-ms", "20",
        "--udp-port", str(port),
        "--key-file", str(key_file(tmp_path, KEY_A)),
        "--secure-udp-i-accept-recovery-on-unauthenticated-transport",
        "--recovery-on", "unknown",
        "--recovery-exec", f"{sys.executable} {script} {out}",
        "--recovery-audit-file", str(audit),
    ])  # fmt: skip
    seen: dict[str, Any] = {}

    def untrusted(path: Any, threshold_ms: int, **kw: Any) -> varta.Observer:
        seen.update(kw)
        kw["udp_trust"] = "untrusted"
        return varta.Observer(path, threshold_ms, **kw)

    daemon = Daemon(cfg, observer_factory=untrusted)
    daemon.start()
    loop = threading.Thread(target=daemon.loop)
    loop.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(seal_shared(KEY_A, os.urandom(8), 1, plain(PID, 1)), ("127.0.0.1", port))
        refused = e2e_wait(
            "the refused audit row",
            lambda: [r for r in audit_rows(audit) if r[3] == "refused"],
        )
    finally:
        s.close()
        daemon.stop_requested = True
        loop.join(30)
        daemon.shutdown()
    assert seen["udp_trust"] == "operator"  # what the operator flag asked for
    assert seen["keys"] and seen["plaintext_udp"] is False
    assert refused[0][4] == str(PID) and refused[0][5] == "unauthenticated_transport"
    assert not out.exists()
