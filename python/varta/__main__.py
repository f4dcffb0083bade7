"""``python -m varta <command>``: ``watch`` (the daemon), ``demo``, ``audit verify``,
``keygen``, ``top``, ``agents``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
