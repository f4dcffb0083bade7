"""Secret-file and output-file open rules (docs/configuration.md, docs/protocol.md#key-files)."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

from varta.watch.secretfile import (
    SecretFileError,
    fsync_dir,
    open_output_file,
    read_secret_file,
)

NOBODY = 65534


def _write(path: pathlib.Path, data: bytes, mode: int) -> pathlib.Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _foreign_owned_file(tmp_path: pathlib.Path, mode: int = 0o600) -> pathlib.Path:
    """A regular file not owned by us: chown it when root, else use a root-owned file."""
    if os.geteuid() == 0:
        p = _write(tmp_path / "foreign", b"x\n", mode)
        os.chown(p, NOBODY, NOBODY)
        return p
    p = pathlib.Path("/etc/passwd")
    assert p.stat().st_uid != os.geteuid()
    return p


def test_reads_a_0600_file(tmp_path: pathlib.Path) -> None:
    p = _write(tmp_path / "key", b"secret\n", 0o600)
    assert read_secret_file(p) == b"secret\n"


def test_stricter_mode_is_fine(tmp_path: pathlib.Path) -> None:
    p = _write(tmp_path / "key", b"k", 0o400)
    assert read_secret_file(p) == b"k"


def test_symlink_is_refused_even_to_a_good_file(tmp_path: pathlib.Path) -> None:
    target = _write(tmp_path / "real", b"k", 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretFileError, match="must not be a symlink") as info:
        read_secret_file(link, "recovery exec file")
    assert "recovery exec file" in str(info.value)
    assert str(link) in str(info.value)
    assert isinstance(info.value, PermissionError)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610])
def test_group_or_other_bits_are_refused(tmp_path: pathlib.Path, mode: int) -> None:
    p = _write(tmp_path / "key", b"k", mode)
    with pytest.raises(
        SecretFileError, match=r"gives group/other access.*0600 or stricter"
    ) as info:
        read_secret_file(p)
    assert f"{mode:04o}" in str(info.value)


def test_directory_is_not_regular(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match=r"must be a regular file.*directory"):
        read_secret_file(d)


def test_fifo_is_refused_without_blocking(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match=r"must be a regular file.*FIFO"):
        read_secret_file(fifo)


def test_device_is_refused() -> None:
    with pytest.raises(SecretFileError, match=r"must be a regular file.*device"):
        read_secret_file("/dev/null")


def test_foreign_owner_is_refused(tmp_path: pathlib.Path) -> None:
    p = _foreign_owned_file(tmp_path)
    with pytest.raises(SecretFileError, match="must be owned by the observer's uid"):
        read_secret_file(p)


def test_missing_file_is_a_plain_oserror(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_secret_file(tmp_path / "nope")


def test_oversized_file_is_refused(tmp_path: pathlib.Path) -> None:
    p = _write(tmp_path / "big", b"x" * 100, 0o600)
    with pytest.raises(SecretFileError, match="larger than 10 bytes"):
        read_secret_file(p, max_bytes=10)


# --- output files (export / audit) --------------------------------------------------


def test_output_file_is_created_0600_even_with_a_lax_umask(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "out.tsv"
    old = os.umask(0o002)
    try:
        fd = open_output_file(p, "export file")
    finally:
        os.umask(old)
    try:
        os.write(fd, b"a\n")
    finally:
        os.close(fd)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    fd = open_output_file(p, "export file")  # reopening appends
    os.write(fd, b"b\n")
    os.close(fd)
    assert p.read_bytes() == b"a\nb\n"


def test_output_file_symlink_is_refused(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"")
    link = tmp_path / "out.tsv"
    link.symlink_to(target)
    with pytest.raises(SecretFileError, match=r"export file .*must not be a symlink"):
        open_output_file(link, "export file")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(SecretFileError, match="must not be a symlink"):
        open_output_file(dangling, "export file")
    assert not (tmp_path / "does-not-exist").exists()


def test_output_file_with_two_links_is_refused(tmp_path: pathlib.Path) -> None:
    p = _write(tmp_path / "out.tsv", b"", 0o600)
    os.link(p, tmp_path / "other")
    with pytest.raises(SecretFileError, match="has 2 hard links; it must have exactly one"):
        open_output_file(p, "export file")


def test_output_file_not_regular_or_not_ours(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises((SecretFileError, IsADirectoryError)):
        open_output_file(d, "audit file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(OSError):  # ENXIO (no reader) or the regular-file rule
        open_output_file(fifo, "audit file")
    if os.geteuid() == 0:
        foreign = _foreign_owned_file(tmp_path)
        with pytest.raises(SecretFileError, match="must be owned by the observer's uid"):
            open_output_file(foreign, "audit file")


def test_fsync_dir_accepts_a_file_in_it(tmp_path: pathlib.Path) -> None:
    fsync_dir(tmp_path / "anything")
