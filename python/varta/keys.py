"""Key files for the secure UDP transport (``docs/protocol.md#key-files``).

Format: 64 hex characters (either case, no ``0x``); surrounding whitespace is
ignored. Secret-file rules (the default everywhere, and always for the
observer): the path must not be a symlink (``O_NOFOLLOW``), must be a regular
file owned by the effective uid, with no group/other permission bits
(``0600`` or stricter); violations raise :class:`PermissionError`, bad
content :class:`ValueError`. Keys are never read from environment variables
(``/proc/<pid>/environ`` leaks them).

- :meth:`varta.Key.from_file` — the agent's key file and any master key file:
  the whole file is one key.
- :func:`load_key_file` — observer ``--key-file``: line-based (blank lines and
  ``#`` comments skipped), exactly one key.
- :func:`load_accepted_key_file` — observer ``--accepted-key-file``: one or
  more keys (rotation; at most :data:`MAX_SHARED_KEYS` shared keys in total).
- :func:`load_master_key_file` — observer ``--master-key-file``.
- :func:`generate_key_file` / ``python -m varta keygen FILE`` — a new random
  key, mode ``0600``, never overwriting an existing file.

A :class:`~varta.Key` never gives its bytes back to Python: the loaders hand
the object straight to the native agent/observer, so the secret stays in
zeroized native memory.
"""

from __future__ import annotations

import os
import sys

from ._varta import (
    MAX_SHARED_KEYS,
    Key,
    _generate_key_file,
    load_accepted_key_file,
    load_key_file,
    load_master_key_file,
)

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Sequence, Union

__all__ = [
    "MAX_SHARED_KEYS",
    "Key",
    "generate_key_file",
    "keygen_main",
    "load_accepted_key_file",
    "load_key_file",
    "load_master_key_file",
]

if TYPE_CHECKING:
    PathLike = Union[str, "os.PathLike[str]"]


def generate_key_file(path: PathLike) -> None:
    """Create ``path`` holding a fresh 32-byte key as 64 hex characters and a newline.

    The file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode ``0600``
    (set explicitly, whatever the umask) and fsynced. An existing file or
    symlink raises :class:`FileExistsError` and is left untouched.
    """
    _generate_key_file(path)


def keygen_main(argv: Sequence[str]) -> int:
    """``python -m varta keygen FILE``: exit 0 on success, 1 if the file cannot be created."""
    from .cli import argument_parser  # argparse only when keygen runs (~1.5 MB resident)

    parser = argument_parser(
        "python -m varta keygen",
        "Write a new random 32-byte key for the secure UDP transport to FILE "
        "(64 hex characters and a newline, mode 0600). Refuses to overwrite an existing file.",
    )
    parser.add_argument("file", metavar="FILE", help="path of the key file to create")
    try:
        ns = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    path: str = ns.file
    try:
        generate_key_file(path)
    except FileExistsError:
        sys.stderr.write(f"varta keygen: {path} already exists; refusing to overwrite it\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"varta keygen: cannot create {path}: {exc.strerror or exc}\n")
        return 1
    sys.stdout.write(f"wrote a new key to {path} (mode 0600)\n")
    return 0
