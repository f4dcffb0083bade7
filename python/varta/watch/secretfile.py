"""Open rules for files the daemon trusts or owns (``docs/configuration.md``,
``docs/protocol.md#key-files``).

*Secret files* (``--recovery-exec-file``, ``--prom-token-file``, key files) are
opened with ``O_NOFOLLOW`` (a symlink is refused with "must not be a symlink"),
then checked with ``fstat`` on that same descriptor: a regular file, owned by
the observer's uid, no group/other permission bits (0600 or stricter). The
content is read from the same descriptor, so a file swapped between the check
and the read is never used.

*Output files* (``--export-file``, ``--recovery-audit-file``) are opened the
same way, created 0600 when missing; an existing one must be a regular file
owned by us with exactly one hard link.

Every refusal raises :class:`SecretFileError` (a :class:`PermissionError`)
whose message names the path and the rule it broke.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Union

    PathLike = Union[str, "os.PathLike[str]"]

#: Upper bound on what :func:`read_secret_file` reads (a key or a command line).
DEFAULT_MAX_BYTES = 1 << 20


class SecretFileError(PermissionError):
    """A file failed an open rule; ``str(exc)`` says which, naming the path."""


def _symlink_errno(code: int | None) -> bool:
    # Linux returns ELOOP for O_NOFOLLOW on a symlink; FreeBSD/NetBSD EMLINK / EFTYPE.
    return code in (errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", -1))


def _open_nofollow(path: PathLike, flags: int, mode: int, what: str) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if _symlink_errno(exc.errno) and os.path.islink(path):
            raise SecretFileError(f"{what} {os.fsdecode(path)}: must not be a symlink") from None
        raise


def check_secret_stat(st: os.stat_result, path: PathLike, what: str = "secret file") -> None:
    """The secret-file rules on an ``fstat`` result; raises :class:`SecretFileError`."""
    name = os.fsdecode(path)
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{what} {name}: must be a regular file ({_kind(st.st_mode)})")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise SecretFileError(
            f"{what} {name}: must be owned by the observer's uid {uid} (owner is uid {st.st_uid})"
        )
    perm = stat.S_IMODE(st.st_mode)
    if perm & 0o077:
        raise SecretFileError(
            f"{what} {name}: mode {perm:04o} gives group/other access; "
            "it must be 0600 or stricter (chmod 600)"
        )


def open_secret_file(path: PathLike, what: str = "secret file") -> int:
    """Open *path* read-only under the secret-file rules; returns the descriptor.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open; it is refused by the
    regular-file check right after.
    """
    fd = _open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, 0, what)
    try:
        check_secret_stat(os.fstat(fd), path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_secret_file(
    path: PathLike, what: str = "secret file", max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes:
    """The whole content of a secret file, read from the checked descriptor."""
    fd = open_secret_file(path, what)
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise SecretFileError(f"{what} {os.fsdecode(path)}: larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_output_stat(st: os.stat_result, path: PathLike, what: str) -> None:
    """Rules for an existing export/audit file: regular, ours, one hard link."""
    name = os.fsdecode(path)
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{what} {name}: must be a regular file ({_kind(st.st_mode)})")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise SecretFileError(
            f"{what} {name}: must be owned by the observer's uid {uid} (owner is uid {st.st_uid})"
        )
    if st.st_nlink != 1:
        raise SecretFileError(
            f"{what} {name}: has {st.st_nlink} hard links; it must have exactly one"
        )


def open_output_file(path: PathLike, what: str, *, read: bool = False) -> int:
    """Open (creating 0600) an append-only output file under the output-file rules.

    With ``read=True`` the descriptor is ``O_RDWR`` (the audit log reads and may
    truncate its tail at startup); else ``O_WRONLY``.
    """
    access = os.O_RDWR if read else os.O_WRONLY
    fd = _open_nofollow(path, access | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600, what)
    try:
        check_output_stat(os.fstat(fd), path, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_dir(path: PathLike) -> None:
    """fsync the directory holding *path* (after a create or rename in it)."""
    parent = os.path.dirname(os.path.abspath(os.fsdecode(path))) or "/"
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if stat.S_ISFIFO(mode):
        return "it is a FIFO"
    if stat.S_ISSOCK(mode):
        return "it is a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "it is a device"
    return "it is not a regular file"
