"""``varta.Key``, the key-file rules (``docs/protocol.md#key-files``, ``docs/agent.md#keys``)
and ``keygen``."""

from __future__ import annotations

import copy
import os
import pathlib
import pickle
import stat
import subprocess
import sys

import pytest

import varta
from varta import Key, keys
from varta._varta._testing import seal_shared

HEX = bytes(range(32)).hex()
ZERO_IV = b"\0" * 8
PT = varta.encode(varta.Status.OK, 1234, 1, 1, 0)


def same_key(a: Key, raw: bytes) -> bool:
    """Keys export nothing, so compare what they seal."""
    return seal_shared(a, ZERO_IV, 0, PT) == seal_shared(raw, ZERO_IV, 0, PT)


def write(path: pathlib.Path, text: str, mode: int = 0o600) -> pathlib.Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# ---- Key --------------------------------------------------------------------


def test_from_hex_accepts_either_case_and_surrounding_whitespace() -> None:
    assert same_key(Key.from_hex(HEX), bytes(range(32)))
    assert same_key(Key.from_hex(f"  {HEX.upper()}\r\n"), bytes(range(32)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid key length"),
        (HEX[:-1], "invalid key length"),
        (HEX + "0", "invalid key length"),
        ("0x" + HEX[2:], "invalid character"),
        (HEX[:-1] + "g", "invalid character"),
        (HEX[:30] + " " + HEX[31:], "invalid character"),
    ],
)
def test_from_hex_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as exc:
        Key.from_hex(text)
    assert HEX[:16] not in str(exc.value), "error messages never echo key material"


def test_from_bytes() -> None:
    assert same_key(Key.from_bytes(bytes(range(32))), bytes(range(32)))
    assert same_key(Key.from_bytes(bytearray(range(32))), bytes(range(32)))
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError, match="32 bytes"):
            Key.from_bytes(bad)
    with pytest.raises(TypeError):
        Key.from_bytes(HEX)  # type: ignore[arg-type]


def test_generate_gives_distinct_keys() -> None:
    a, b = Key.generate(), Key.generate()
    assert seal_shared(a, ZERO_IV, 0, PT) != seal_shared(b, ZERO_IV, 0, PT)


def test_key_never_shows_or_exports_its_bytes() -> None:
    k = Key.from_hex(HEX)
    assert repr(k) == "Key(<redacted>)"
    assert str(k) == "Key(<redacted>)"
    with pytest.raises(TypeError):
        bytes(k)  # type: ignore[call-overload]
    assert not hasattr(k, "hex")
    with pytest.raises(TypeError, match="secret"):
        pickle.dumps(k)
    with pytest.raises(TypeError, match="secret"):
        copy.copy(k)
    assert varta.Key is Key and keys.Key is Key


# ---- Key.from_file and the secret-file rules --------------------------------


def test_from_file_whole_file_trimmed(tmp_path: pathlib.Path) -> None:
    p = write(tmp_path / "k", f"\n  {HEX}  \n")
    assert same_key(Key.from_file(p), bytes(range(32)))
    assert same_key(Key.from_file(str(p)), bytes(range(32)))
    p.chmod(0o400)
    assert same_key(Key.from_file(p), bytes(range(32)))


def test_from_file_bad_content_is_value_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="invalid key length"):
        Key.from_file(write(tmp_path / "short", "abcd"))
    with pytest.raises(ValueError, match="invalid character"):
        Key.from_file(write(tmp_path / "bad", HEX[:-2] + "zz"))
    # The agent's key file is one key, not the observer's line format.
    with pytest.raises(ValueError):
        Key.from_file(write(tmp_path / "commented", f"# mine\n{HEX}\n"))


def test_symlink_is_refused(tmp_path: pathlib.Path) -> None:
    target = write(tmp_path / "real", HEX)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(PermissionError, match="must not be a symlink"):
        Key.from_file(link)
    # Explicit opt-out follows it.
    assert same_key(Key.from_file(link, check_permissions=False), bytes(range(32)))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o777])
def test_group_or_other_bits_are_refused(tmp_path: pathlib.Path, mode: int) -> None:
    p = write(tmp_path / "k", HEX, mode)
    with pytest.raises(PermissionError, match="0600 or stricter"):
        Key.from_file(p)
    assert same_key(Key.from_file(p, check_permissions=False), bytes(range(32)))


def test_foreign_owner_is_refused(tmp_path: pathlib.Path) -> None:
    if os.geteuid() == 0:
        p = write(tmp_path / "k", HEX)
        os.chown(p, 4242, 4242)  # as root we can give the file away
    else:
        p = pathlib.Path("/etc/hostname")  # root-owned, foreign to a normal user
    with pytest.raises(PermissionError, match=f"expected uid {os.geteuid()}"):
        Key.from_file(p)


def test_not_a_regular_file_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PermissionError, match="regular file"):
        Key.from_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(PermissionError, match="regular file"):
        Key.from_file(fifo)  # and no hang in open()


def test_missing_file_is_file_not_found_with_filename(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        Key.from_file(tmp_path / "nope")
    assert exc.value.filename == str(tmp_path / "nope")


def test_os_errors_have_one_shape(tmp_path: pathlib.Path) -> None:
    """Key files and agent connects raise through the same funnel: the
    errno's subclass, the bare strerror, the path as filename."""
    errors = []
    for call in (Key.from_file, varta.Varta.connect):
        with pytest.raises(FileNotFoundError) as exc:
            call(tmp_path / "nope")
        errors.append((exc.value.errno, exc.value.strerror, exc.value.filename, str(exc.value)))
    assert errors[0] == errors[1]
    assert "os error" not in errors[0][1]


# ---- observer loaders ---------------------------------------------------------


def test_observer_key_file_is_line_based_with_exactly_one_key(tmp_path: pathlib.Path) -> None:
    p = write(tmp_path / "k", f"# primary\n\n  {HEX}  \n\n")
    assert same_key(keys.load_key_file(p), bytes(range(32)))
    two = write(tmp_path / "two", f"{HEX}\n{'ab' * 32}\n")
    with pytest.raises(ValueError, match="exactly one key, found 2"):
        keys.load_key_file(two)
    with pytest.raises(ValueError, match="no key"):
        keys.load_key_file(write(tmp_path / "none", "# nothing here\n"))
    with pytest.raises(ValueError, match="line 2"):
        keys.load_accepted_key_file(write(tmp_path / "bad", f"{HEX}\nnope\n"))


def test_accepted_key_file_holds_one_or_more(tmp_path: pathlib.Path) -> None:
    p = write(tmp_path / "acc", f"{HEX}\n# old one:\n{'ab' * 32}\n")
    got = keys.load_accepted_key_file(p)
    assert len(got) == 2
    assert same_key(got[1], b"\xab" * 32)
    assert keys.MAX_SHARED_KEYS == 8


def test_master_key_file_and_observer_checks_are_mandatory(tmp_path: pathlib.Path) -> None:
    p = write(tmp_path / "m", HEX + "\n")
    assert same_key(keys.load_master_key_file(p), bytes(range(32)))
    p.chmod(0o644)
    for loader in (keys.load_master_key_file, keys.load_key_file, keys.load_accepted_key_file):
        with pytest.raises(PermissionError):
            loader(p)


# ---- keygen -------------------------------------------------------------------


def run_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "varta", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keygen_cli_writes_a_private_key_and_refuses_to_overwrite(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "agent.key"
    r = run_keygen(str(p))
    assert r.returncode == 0, r.stderr
    assert str(p) in r.stdout
    text = p.read_text()
    assert len(text) == 65 and text.endswith("\n")
    assert all(c in "0123456789abcdef" for c in text[:64])
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.stat().st_uid == os.geteuid()
    # It passes every loader's strict checks and matches its hex.
    assert same_key(Key.from_file(p), bytes.fromhex(text))
    assert same_key(keys.load_key_file(p), bytes.fromhex(text))

    again = run_keygen(str(p))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert p.read_text() == text


def test_keygen_usage_errors() -> None:
    r = run_keygen()
    assert r.returncode == 2
    # One line naming what is wrong, not argparse's usage block.
    assert r.stderr.splitlines() == [
        "python -m varta keygen: the following arguments are required: FILE (see --help)"
    ]
    assert keys.keygen_main(["--help"]) == 0


def test_keygen_mode_is_exact_whatever_the_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        assert keys.keygen_main([str(tmp_path / "k0")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k0").stat().st_mode) == 0o600


def test_keygen_never_follows_a_symlink(tmp_path: pathlib.Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    link = tmp_path / "link.key"
    link.symlink_to(elsewhere)
    assert keys.keygen_main([str(link)]) == 1
    assert not elsewhere.exists()


def test_keygen_reports_os_errors(tmp_path: pathlib.Path) -> None:
    assert keys.keygen_main([str(tmp_path / "no-such-dir" / "k")]) == 1


def test_generated_keys_differ(tmp_path: pathlib.Path) -> None:
    keys.generate_key_file(tmp_path / "a")
    keys.generate_key_file(str(tmp_path / "b"))
    assert (tmp_path / "a").read_text() != (tmp_path / "b").read_text()
    with pytest.raises(FileExistsError):
        keys.generate_key_file(tmp_path / "a")
