"""The Python surface of the VLP v0.2 codec, and every frame/CRC conformance vector."""

from __future__ import annotations

import pickle
import struct
from typing import Any, Callable

import pytest

import varta
from varta import NONCE_TERMINAL, DecodeError, Frame, Status

U64 = 2**64 - 1


def _field(v: Any) -> int:
    return int(v, 16) if isinstance(v, str) else int(v)


def test_crc32c_conformance_vectors(vectors: dict[str, Any]) -> None:
    assert len(vectors["crc32c_vectors"]) == 5
    for case in vectors["crc32c_vectors"]:
        got = varta.crc32c(bytes.fromhex(case["input_hex"]))
        assert f"{got:08x}" == case["expected_crc_hex"], case["id"]


def test_frame_conformance_vectors(vectors: dict[str, Any]) -> None:
    seen_errors = set()
    for case in vectors["frame_vectors"]:
        err = case["expected_decode_error"]
        if err is None:
            inp = case["inputs"]
            wire = bytes.fromhex(case["expected_wire_hex"])
            args = (inp["status"], inp["pid"], _field(inp["timestamp"]), _field(inp["nonce"]))
            assert varta.encode(*args, inp["payload"]) == wire, case["id"]
            frame = varta.decode(wire)
            assert frame == Frame(*args, inp["payload"]), case["id"]
            assert frame.encode() == wire
            assert frame.status is Status.coerce(inp["status"])
        else:
            wire = bytes.fromhex(case["wire_hex"])
            with pytest.raises(DecodeError) as ei:
                varta.decode(wire)
            assert ei.value.kind == err, case["id"]
            seen_errors.add(err)
    assert seen_errors == set(DecodeError.KINDS)


def test_worked_examples_from_spec() -> None:
    assert varta.encode(Status.OK, 2, 0, 1, 0).hex() == (
        "56410200020000000000000000000000010000000000000000000000e4116baa"
    )
    assert varta.encode("CRITICAL", 2, 999, NONCE_TERMINAL).hex() == (
        "5641020202000000e703000000000000ffffffffffffffff00000000a299eeed"
    )


def _reframe(body28: bytes) -> bytes:
    return body28 + struct.pack("<I", varta.crc32c(body28))


def test_decode_error_fields() -> None:
    good = varta.encode(Status.OK, 4242, 7, 9, 3)
    bad_crc = good[:28] + b"\x00\x00\x00\x00"
    with pytest.raises(DecodeError) as ei:
        Frame.decode(bad_crc)
    e = ei.value
    assert (e.kind, e.expected, e.actual) == ("BadCrc", varta.crc32c(good[:28]), 0)
    assert e.pid is None and e.nonce is None and e.byte is None
    assert isinstance(e, ValueError)
    assert str(e).startswith("varta-vlp: ")

    with pytest.raises(DecodeError) as ei:
        varta.decode(_reframe(good[:3] + b"\x07" + good[4:28]))
    assert (ei.value.kind, ei.value.byte, ei.value.status) == ("BadStatus", 7, 7)

    with pytest.raises(DecodeError) as ei:
        varta.decode(varta.encode(Status.OK, 1, 0, 1))
    assert (ei.value.kind, ei.value.pid) == ("BadPid", 1)

    with pytest.raises(DecodeError) as ei:
        varta.decode(varta.encode(Status.OK, 5, U64, 1))
    assert (ei.value.kind, ei.value.timestamp) == ("BadTimestamp", U64)

    with pytest.raises(DecodeError) as ei:
        varta.decode(varta.encode(Status.DEGRADED, 5, 1, NONCE_TERMINAL))
    assert (ei.value.kind, ei.value.nonce, ei.value.status) == ("BadNonce", U64, Status.DEGRADED)
    assert ei.value.status is Status.DEGRADED

    with pytest.raises(DecodeError) as ei:
        varta.decode(varta.encode(Status.STALL, 5, 1, 1))
    assert ei.value.kind == "StallOnWire"


def test_decode_order_is_normative() -> None:
    # Bad magic AND bad CRC: magic is checked first.
    frame = bytearray(varta.encode(Status.OK, 5, 1, 1))
    frame[0] = 0
    frame[31] ^= 0xFF
    with pytest.raises(DecodeError) as ei:
        varta.decode(bytes(frame))
    assert ei.value.kind == "BadMagic"
    # Status 3 with a valid CRC is StallOnWire, never BadStatus.
    with pytest.raises(DecodeError) as ei:
        varta.decode(varta.encode(3, 0, U64, U64))
    assert ei.value.kind == "StallOnWire"
    # Bad status AND bad pid: status first.
    with pytest.raises(DecodeError) as ei:
        varta.decode(
            _reframe(bytes(varta.encode(Status.OK, 0, 0, 1))[:3] + b"\x09" + bytes(28 - 4))
        )
    assert ei.value.kind == "BadStatus"


@pytest.mark.parametrize("n", [0, 31, 33, 64])
def test_wrong_length_names_the_length(n: int) -> None:
    with pytest.raises(DecodeError, match=f"got {n}") as ei:
        varta.decode(b"\x56" * n)
    assert ei.value.kind == "BadMagic"


@pytest.mark.parametrize(
    "args",
    [
        (Status.OK, -1, 0, 1, 0),
        (Status.OK, 2**32, 0, 1, 0),
        (Status.OK, 2, -1, 1, 0),
        (Status.OK, 2, 2**64, 1, 0),
        (Status.OK, 2, 0, 2**64, 0),
        (Status.OK, 2, 0, -5, 0),
        (Status.OK, 2, 0, 1, 2**32),
        (Status.OK, 2, 0, 1, -1),
        (4, 2, 0, 1, 0),
        (-1, 2, 0, 1, 0),
        ("sideways", 2, 0, 1, 0),
    ],
)
def test_encode_out_of_range_raises_never_wraps(args: tuple[Any, ...]) -> None:
    with pytest.raises((ValueError, OverflowError)):
        varta.encode(*args)
    with pytest.raises((ValueError, OverflowError)):
        Frame(*args)


def test_encode_accepts_sentinels_for_negative_tests() -> None:
    assert len(varta.encode(Status.STALL, 0, U64, U64, 2**32 - 1)) == 32


def test_status_is_intenum_and_accepts_names() -> None:
    assert Status.OK == 0 and Status.STALL == 3
    assert [varta.encode(s, 9, 1, 1) for s in ("ok", "Ok", "OK", 0, Status.OK)].count(
        varta.encode(Status.OK, 9, 1, 1)
    ) == 5
    with pytest.raises(TypeError):
        varta.encode(1.5, 9, 1, 1)  # type: ignore[arg-type]


def test_frame_value_semantics() -> None:
    a = Frame("degraded", 77, 5, 6, 7)
    b = Frame(Status.DEGRADED, 77, 5, 6, 7)
    assert a == b and hash(a) == hash(b) and a != Frame(Status.OK, 77, 5, 6, 7)
    assert repr(a) == "Frame(status=Status.DEGRADED, pid=77, timestamp=5, nonce=6, payload=7)"
    assert pickle.loads(pickle.dumps(a)) == a
    assert not a.is_terminal and Frame(Status.CRITICAL, 3, 1, NONCE_TERMINAL).is_terminal
    with pytest.raises(AttributeError):
        a.pid = 3  # type: ignore[misc]
    with pytest.raises(DecodeError) as ei:
        varta.decode(bytes(32))
    err = ei.value
    again = pickle.loads(pickle.dumps(err))
    assert again.kind == err.kind == "BadMagic"


@pytest.mark.parametrize(
    "value", [Status.OK, 1, 2, "critical", " Degraded ", "ok", "x", 7, -1, True, 1.0, None]
)
def test_status_coerce_accepts_what_encode_accepts(value: object) -> None:
    """One set of rules for a status argument: Status.coerce and the codec agree."""

    def outcome(f: Callable[[], object]) -> object:
        try:
            return f()
        except (TypeError, ValueError) as exc:
            return (type(exc), str(exc))

    coerced = outcome(lambda: Status.coerce(value))  # type: ignore[arg-type]
    encoded = outcome(lambda: varta.decode(varta.encode(value, 4242, 1, 1)).status)  # type: ignore[arg-type]
    assert coerced == encoded
