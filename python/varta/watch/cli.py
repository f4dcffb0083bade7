"""``varta-watch`` entry point (console script and ``python -m varta watch``).

Exit codes: 0 clean shutdown or ``--help``; 1 runtime failure (bind refused,
unreadable key/token/exec file, …) with the reason on stderr; 2 bad command
line — ``varta-watch: <Kind>: <detail>`` then the full help on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional

from .config import PROG, ConfigError, HelpRequested, help_text, parse_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
    except HelpRequested:
        sys.stdout.write(help_text())
        sys.stdout.flush()
        return 0
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n\n{help_text()}")
        return 2

    from . import logsetup
    from .loop import run

    logsetup.setup(cfg.log_format)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
