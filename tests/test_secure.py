"""Secure transport crypto (``docs/protocol.md#secure-transport``) against an independent
implementation.

The reference side is the ``cryptography`` package (OpenSSL's ChaCha20-Poly1305
and HKDF); our side is the native core through the underscored test helpers.
Frames sealed by one side must open on the other, byte for byte.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import varta
from varta import DecodeError, Frame, Key, Status
from varta._varta._testing import (
    SecureReceiver,
    SecureSession,
    derive_agent_key,
    derive_epoch_key,
    derive_iv_prefix,
    derive_panic_iv_prefix,
    seal_master,
    seal_panic_frame,
    seal_shared,
)

SEC = 1_000_000_000
M = bytes(range(32))


# ---- the independent implementation ----------------------------------------


def ref_hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    """Full HKDF-SHA256 with an EMPTY salt (salt=None), as docs/protocol.md#key-derivation
    requires."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def ref_agent_key(master: bytes, pid: int) -> bytes:
    return ref_hkdf(master, b"varta-agent-v1\0" + struct.pack("<I", pid), 32)


def ref_iv_prefix(salt: bytes, index: int) -> bytes:
    return ref_hkdf(salt, b"varta-iv-prefix-v1\0" + struct.pack("<I", index), 8)


def ref_panic_iv_prefix(salt: bytes, pid: int, ts: int, counter: int) -> bytes:
    return ref_hkdf(salt, b"varta-panic-iv-v1\0" + struct.pack("<IQI", pid, ts, counter), 8)


def ref_epoch_key(agent_key: bytes, epoch: int) -> bytes:
    return ref_hkdf(agent_key, b"varta-epoch-v1\0" + struct.pack("<Q", epoch), 32)


def ref_seal_shared(key: bytes, iv: bytes, counter: int, pt: bytes) -> bytes:
    nonce = iv + struct.pack("<I", counter)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, pt, b"")


def ref_seal_master(master: bytes, pid: int, iv: bytes, counter: int, pt: bytes) -> bytes:
    wire_pid = struct.pack("<I", pid)
    nonce = iv + struct.pack("<I", counter)
    sealed = ChaCha20Poly1305(ref_agent_key(master, pid)).encrypt(nonce, pt, wire_pid)
    return wire_pid + nonce + sealed


def ref_open_shared(key: bytes, wire: bytes) -> bytes:
    assert len(wire) == 60
    return ChaCha20Poly1305(key).decrypt(wire[:12], wire[12:], None)


def ref_open_master(master: bytes, wire: bytes) -> bytes:
    assert len(wire) == 64
    (pid,) = struct.unpack_from("<I", wire)
    pt = ChaCha20Poly1305(ref_agent_key(master, pid)).decrypt(wire[4:16], wire[16:], wire[:4])
    assert pt[4:8] == wire[:4], "inner pid must equal wire pid"
    return pt


def beat(pid: int, nonce: int, status: Status = Status.OK, ts: int | None = None) -> bytes:
    return varta.encode(status, pid, nonce * 10 if ts is None else ts, nonce, 7)


def crash(pid: int, ts: int) -> bytes:
    return varta.encode(Status.CRITICAL, pid, ts, varta.NONCE_TERMINAL, 0)


def rx(
    shared: list[bytes] | None = None, master: bytes | None = None, gap_ms: int = 5000
) -> SecureReceiver:
    return SecureReceiver([Key.from_bytes(k) for k in shared or []], master, gap_ms)


# ---- conformance vectors -----------------------------------------------------


def test_every_secure_vector_both_implementations(vectors: dict[str, Any]) -> None:
    cases = vectors["secure_frame_vectors"]
    assert {c["kind"] for c in cases} == {
        "shared_key_seal",
        "master_key_seal",
        "kdf_agent_key",
        "kdf_iv_prefix",
        "kdf_epoch_key",
    }
    for c in cases:
        h = bytes.fromhex
        if c["kind"] == "shared_key_seal":
            args = (h(c["key_hex"]), h(c["iv_random_hex"]), c["iv_counter"], h(c["plaintext_hex"]))
            want = h(c["expected_wire_hex"])
            assert seal_shared(*args) == want, c["id"]
            assert ref_seal_shared(*args) == want, c["id"]
            assert ref_open_shared(args[0], want) == args[3]
        elif c["kind"] == "master_key_seal":
            master, pid = h(c["master_key_hex"]), c["agent_pid"]
            assert derive_agent_key(master, pid) == h(c["derived_agent_key_hex"])
            assert ref_agent_key(master, pid) == h(c["derived_agent_key_hex"])
            args2 = (master, pid, h(c["iv_random_hex"]), c["iv_counter"], h(c["plaintext_hex"]))
            want = h(c["expected_wire_hex"])
            assert seal_master(*args2) == want, c["id"]
            assert ref_seal_master(*args2) == want, c["id"]
        elif c["kind"] == "kdf_agent_key":
            master, pid = h(c["master_key_hex"]), c["agent_id"]
            assert b"varta-agent-v1\0" + struct.pack("<I", pid) == h(c["info_hex"])
            assert derive_agent_key(master, pid) == h(c["expected_okm_hex"])
            assert ref_agent_key(master, pid) == h(c["expected_okm_hex"])
        elif c["kind"] == "kdf_iv_prefix":
            salt, idx = h(c["session_salt_hex"]), c["prefix_index"]
            assert b"varta-iv-prefix-v1\0" + struct.pack("<I", idx) == h(c["info_hex"])
            assert derive_iv_prefix(salt, idx) == h(c["expected_iv_prefix_hex"])
            assert ref_iv_prefix(salt, idx) == h(c["expected_iv_prefix_hex"])
        elif c["kind"] == "kdf_epoch_key":
            key, epoch = h(c["agent_key_hex"]), c["epoch"]
            assert b"varta-epoch-v1\0" + struct.pack("<Q", epoch) == h(c["info_hex"])
            assert derive_epoch_key(key, epoch) == h(c["expected_okm_hex"])
            assert ref_epoch_key(key, epoch) == h(c["expected_okm_hex"])


def test_iv_prefix_vector_description_salt_is_wrong() -> None:
    # The vector's description says the session salt is also the HKDF salt;
    # that gives 30cfa718..., the expected value needs an empty salt
    # (docs/protocol.md#key-derivation).
    salt = bytes(range(1, 17))
    info = b"varta-iv-prefix-v1\0\x07\0\0\0"
    wrong = HKDF(algorithm=hashes.SHA256(), length=8, salt=salt, info=info).derive(salt)
    assert wrong.hex() == "30cfa71880bffaec"
    assert derive_iv_prefix(salt, 7).hex() == "9fee777f36be69ce"


def test_spec_reference_table() -> None:
    assert derive_agent_key(M, 2).hex() == (
        "db292f5843a0737aec785a9df270561b343d06e5fe8f89fce72f0869ba77afd5"
    )
    assert derive_panic_iv_prefix(b"\xa5" * 16, 42, 1000, 7).hex() == "e2615ed3e4f44375"
    assert ref_panic_iv_prefix(b"\xa5" * 16, 42, 1000, 7).hex() == "e2615ed3e4f44375"


def test_kdfs_agree_with_cryptography_on_random_inputs() -> None:
    r = random.Random(20260521)
    for _ in range(50):
        k, salt = r.randbytes(32), r.randbytes(16)
        pid, idx, ts, ctr = (
            r.getrandbits(32),
            r.getrandbits(32),
            r.getrandbits(64),
            r.getrandbits(32),
        )
        assert derive_agent_key(k, pid) == ref_agent_key(k, pid)
        assert derive_iv_prefix(salt, idx) == ref_iv_prefix(salt, idx)
        assert derive_panic_iv_prefix(salt, pid, ts, ctr) == ref_panic_iv_prefix(salt, pid, ts, ctr)
        assert derive_epoch_key(k, ts) == ref_epoch_key(k, ts)


# ---- cross-opening -------------------------------------------------------------


def test_ours_open_with_cryptography_and_theirs_open_with_ours() -> None:
    r = random.Random(7)
    key, master = r.randbytes(32), r.randbytes(32)
    ours = rx([key], master)
    for i in range(100):
        pid = 2 + r.getrandbits(22)
        iv, ctr = r.randbytes(8), r.getrandbits(32)
        pt = beat(pid, i + 1)
        # ours -> cryptography
        assert ref_open_shared(key, seal_shared(key, iv, ctr, pt)) == pt
        assert ref_open_master(master, seal_master(master, pid, iv, ctr, pt)) == pt
        tampered = bytearray(seal_shared(key, iv, ctr, pt))
        tampered[r.randrange(60)] ^= 1 << r.randrange(8)
        with pytest.raises(InvalidTag):
            ref_open_shared(key, bytes(tampered))
        # cryptography -> ours (fresh pids each time, so replay state never interferes)
        kind, got = ours.open(ref_seal_shared(key, iv, ctr, pt), i)
        assert kind == "accepted" and isinstance(got, Frame)
        assert got.encode() == pt
        pid2 = pid + 1
        pt2 = beat(pid2, i + 1)
        kind, got = ours.open(ref_seal_master(master, pid2, iv, ctr, pt2), i)
        assert (kind, got) == ("accepted", Frame.decode(pt2))
    assert ours.counters()["frame_decrypt_failures"] == 0


def test_session_frames_follow_the_spec_and_open_with_cryptography() -> None:
    key = bytes(range(100, 132))
    s = SecureSession(key)
    assert s.wire_len == 60 and s.prefix_index == 0 and s.counter == 0
    salt = s.salt
    assert len(salt) == 16
    for n in range(1, 4):
        pt = beat(4242, n)
        wire = s.next_wire(pt)
        assert wire[:8] == ref_iv_prefix(salt, 0)
        assert wire[8:12] == struct.pack("<I", n - 1)
        assert ref_open_shared(key, wire) == pt
        assert s.commit()
    # Near the u32 wrap: 0xFFFFFFFE is the last counter of a prefix, then prefix 1 / counter 0.
    s.set_position(0, 0xFFFF_FFFE)
    w1 = s.next_wire(beat(4242, 10))
    assert w1[8:12] == b"\xfe\xff\xff\xff"
    s.commit()
    w2 = s.next_wire(beat(4242, 11))
    assert w2[:12] == ref_iv_prefix(salt, 1) + b"\0\0\0\0"
    assert ref_open_shared(key, w2) == beat(4242, 11)
    # Not committed (failed send): the position did not move.
    assert (s.prefix_index, s.counter) == (0, 0xFFFF_FFFF)
    s.commit()
    assert (s.prefix_index, s.counter) == (1, 1)
    # A reseed draws a new salt and starts over.
    s.reseed(4242)
    assert s.salt != salt and (s.prefix_index, s.counter) == (0, 0)


def test_master_session_opens_with_cryptography() -> None:
    master = bytes(range(32))
    s = SecureSession(master, master_pid=2, salt=bytes(range(1, 17)))
    pt = beat(2, 1)
    wire = s.next_wire(pt)
    assert len(wire) == 64 and wire[:4] == b"\x02\0\0\0"
    assert wire[4:12] == ref_iv_prefix(bytes(range(1, 17)), 0)
    assert ref_open_master(master, wire) == pt
    with pytest.raises(OSError, match="reconnect"):
        s.next_wire(beat(3, 2))  # a frame for another pid (un-reconnected fork)


def test_panic_frame_opens_with_cryptography() -> None:
    key, salt = bytes(32), b"\x11" * 16
    pt = crash(4242, 123_456)
    wire = seal_panic_frame(key, salt, 4242, 123_456, 3, pt)
    assert wire[:8] == ref_panic_iv_prefix(salt, 4242, 123_456, 3)
    assert wire[8:12] == b"\x03\0\0\0"
    assert ref_open_shared(key, wire) == pt


# ---- receiver rejections and counters -------------------------------------------


KEY = bytes(range(32, 64))


def test_tampered_wrong_key_truncated_are_counted_and_leave_no_state() -> None:
    r = rx([KEY])
    good = ref_seal_shared(KEY, b"\1" * 8, 0, beat(100, 1))
    for i in range(60):
        bad = bytearray(good)
        bad[i] ^= 0x40
        assert r.open(bytes(bad), 0) == ("rejected", "frame_decrypt_failures")
    assert r.open(ref_seal_shared(b"\x99" * 32, b"\1" * 8, 0, beat(100, 1)), 0) == (
        "rejected",
        "frame_decrypt_failures",
    )
    for n in (0, 32, 59, 61, 64 + 1):
        assert r.open(good[:n] if n <= 60 else good + b"\0" * (n - 60), 0) == (
            "rejected",
            "truncated_datagrams",
        )
    assert r.senders == 0
    assert r.counters() == {
        "frame_decrypt_failures": 61,
        "secure_replay_refused": 0,
        "sender_state_full": 0,
        "secure_aead_attempts": 61,
        "truncated_datagrams": 5,
    }
    assert r.open(good, 0)[0] == "accepted"


def test_replayed_and_stale_prefix_frames_are_refused() -> None:
    r = rx([KEY])
    a, b, c = b"\xaa" * 8, b"\xbb" * 8, b"\xcc" * 8
    pid = 500

    def send(iv: bytes, ctr: int, nonce: int, now: int = SEC) -> tuple[str, object]:
        return r.open(ref_seal_shared(KEY, iv, ctr, beat(pid, nonce)), now)

    first = ref_seal_shared(KEY, a, 0, beat(pid, 1))
    assert r.open(first, 0)[0] == "accepted"
    assert r.open(first, 0) == ("rejected", "secure_replay_refused")
    assert send(a, 1, 2)[0] == "accepted"
    assert send(b, 0, 3)[0] == "accepted"  # new prefix (reconnect)
    assert send(c, 0, 4)[0] == "accepted"  # another one: a is now aged out
    assert send(a, 5, 2) == ("rejected", "secure_replay_refused")  # stale prefix
    assert send(b, 0, 3) == ("rejected", "secure_replay_refused")  # previous prefix, old counter
    assert send(b, 1, 5)[0] == "accepted"  # previous prefix, fresh counter
    # Within the restart gap a replay of the first frame stays refused...
    assert r.open(first, 4 * SEC) == ("rejected", "secure_replay_refused")
    assert r.counters()["secure_replay_refused"] == 4
    # ...and so it does after the sender has been silent past the restart gap
    # and past the eviction TTL: a superseded session is never accepted again
    # (docs/security.md).
    assert r.open(first, 6 * SEC) == ("rejected", "secure_replay_refused")
    assert r.open(first, 3600 * SEC) == ("rejected", "secure_replay_refused")
    assert r.open(ref_seal_shared(KEY, c, 1, beat(pid, 6)), 3600 * SEC) == (
        "rejected",
        "secure_replay_refused",
    )


def test_recycled_pid_is_a_new_session_only_after_the_gap() -> None:
    r = rx([KEY], gap_ms=2000)
    pid = 600
    assert r.open(ref_seal_shared(KEY, b"\1" * 8, 9, beat(pid, 50)), 0)[0] == "accepted"
    restart = ref_seal_shared(KEY, b"\2" * 8, 0, beat(pid, 1))
    assert r.open(restart, 2 * SEC - 1) == ("rejected", "secure_replay_refused")
    assert r.open(restart, 2 * SEC)[0] == "accepted"


def test_decode_error_after_open_is_a_decode_event() -> None:
    r = rx([KEY])
    pt = bytearray(beat(700, 1))
    pt[0] = 0x00  # bad magic inside an authentic frame
    kind, err = r.open(ref_seal_shared(KEY, b"\0" * 8, 0, bytes(pt)), 0)
    assert kind == "decode"
    assert isinstance(err, DecodeError) and err.kind == "BadMagic"
    assert r.senders == 0
    assert r.counters()["frame_decrypt_failures"] == 0


def test_master_frame_with_mismatched_inner_pid_does_not_open() -> None:
    r = rx([], M)
    pt = beat(801, 1)
    # Sealed correctly for wire pid 800 (valid tag), but the plaintext says 801.
    wire_pid = struct.pack("<I", 800)
    nonce = b"\5" * 8 + b"\0\0\0\0"
    sealed = ChaCha20Poly1305(ref_agent_key(M, 800)).encrypt(nonce, pt, wire_pid)
    assert r.open(wire_pid + nonce + sealed, 0) == ("rejected", "frame_decrypt_failures")
    # Master frames with AAD missing (sealed with empty AAD) do not open either.
    sealed_no_aad = ChaCha20Poly1305(ref_agent_key(M, 801)).encrypt(nonce, pt, None)
    assert r.open(struct.pack("<I", 801) + nonce + sealed_no_aad, 0)[0] == "rejected"
    assert r.counters()["secure_aead_attempts"] == 2


def test_attempts_count_every_configured_key() -> None:
    keys = [bytes([i]) * 32 for i in range(1, 9)]
    r = rx(keys, M)
    assert r.open(ref_seal_shared(keys[0], b"\0" * 8, 0, beat(900, 1)), 0)[0] == "accepted"
    assert r.counters()["secure_aead_attempts"] == 8  # master never tried on 60 bytes
    assert r.open(ref_seal_master(M, 901, b"\0" * 8, 0, beat(901, 1)), 0)[0] == "accepted"
    assert r.counters()["secure_aead_attempts"] == 8 + 9
    with pytest.raises(ValueError, match="at most 8"):
        rx([bytes([i]) * 32 for i in range(9)])
    with pytest.raises(ValueError, match="shared key or a master key"):
        rx([])


def test_rotated_out_key_stops_working() -> None:
    old, new = b"\x0d" * 32, b"\x0e" * 32
    during = rx([new, old])
    assert during.open(ref_seal_shared(old, b"\1" * 8, 0, beat(1000, 1)), 0)[0] == "accepted"
    after = rx([new])
    assert after.open(ref_seal_shared(old, b"\1" * 8, 1, beat(1000, 2)), 0) == (
        "rejected",
        "frame_decrypt_failures",
    )
    assert after.open(ref_seal_shared(new, b"\2" * 8, 0, beat(1000, 3)), 0)[0] == "accepted"


def test_sender_table_full_fails_closed() -> None:
    r = rx([KEY])
    for pid in range(10, 10 + 1024):
        assert r.open(ref_seal_shared(KEY, b"\1" * 8, 0, beat(pid, 1)), 0)[0] == "accepted"
    assert r.open(ref_seal_shared(KEY, b"\1" * 8, 0, beat(5, 1)), SEC) == (
        "rejected",
        "sender_state_full",
    )
    assert r.senders == 1024
    # Known senders still work.
    assert r.open(ref_seal_shared(KEY, b"\1" * 8, 1, beat(10, 2)), SEC)[0] == "accepted"
    assert r.counters()["sender_state_full"] == 1


def test_key_objects_and_raw_bytes_are_interchangeable() -> None:
    k = Key.from_bytes(KEY)
    pt = beat(1100, 1)
    assert seal_shared(k, b"\0" * 8, 0, pt) == seal_shared(KEY, b"\0" * 8, 0, pt)
    assert seal_shared(bytearray(KEY), b"\0" * 8, 0, pt) == seal_shared(KEY, b"\0" * 8, 0, pt)
    with pytest.raises(TypeError):
        seal_shared("not a key", b"\0" * 8, 0, pt)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        seal_shared(KEY[:31], b"\0" * 8, 0, pt)
    with pytest.raises(ValueError, match="iv_random"):
        seal_shared(KEY, b"\0" * 7, 0, pt)
