"""``varta-watch`` entry point (console script and ``python -m varta watch``).

Exit codes: 0 clean shutdown, ``--help`` or ``--version``; 1 runtime failure
(bind refused, unreadable key/token/exec file, …) with the reason on stderr;
2 bad command line — one line ``varta-watch: <Kind>: <detail> (see --help)``
on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .config import (
    PROG,
    ConfigError,
    HelpRequested,
    VersionRequested,
    help_text,
    log_level,
    parse_args,
)

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    from typing import Optional


def version_line(prog: str = PROG) -> str:
    from .._varta import __version__

    return f"{prog} {__version__}\n"


#: glibc's mmap threshold in the daemon process (its default moves up to 32 MiB).
MMAP_THRESHOLD_BYTES = 64 * 1024


def usage_error(prog: str, message: str) -> int:
    """One line on stderr naming what was wrong, then exit status 2."""
    sys.stderr.write(f"{prog}: {message} (see --help)\n")
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
        level = log_level(cfg)
    except HelpRequested:
        sys.stdout.write(help_text())
        sys.stdout.flush()
        return 0
    except VersionRequested:
        sys.stdout.write(version_line())
        sys.stdout.flush()
        return 0
    except ConfigError as exc:
        return usage_error(PROG, str(exc))

    from .. import _varta
    from . import logsetup
    from .loop import run

    # This process is the daemon: buffers of 64 KiB and more (a /metrics body)
    # go back to the OS when freed, not to a heap that keeps their high-water
    # mark (docs/operations.md#resources).
    _varta.set_mmap_threshold(MMAP_THRESHOLD_BYTES)
    logsetup.setup(cfg.log_format, level=level)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
