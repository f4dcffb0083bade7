"""Dispatcher for ``python -m varta`` and the ``varta`` console script. Each
subcommand lives with its subsystem."""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing is not loaded at run time (docs/operations.md#resources)
if TYPE_CHECKING:
    import argparse
    from typing import Callable, NoReturn, Optional, Sequence

USAGE = """usage: python -m varta <command> [args]   (or: varta <command> [args])

commands:
  watch ...          run the varta-watch observer daemon (same flags as varta-watch)
  demo [--socket P]  varta-watch plus a demo agent beating into it (the main job)
  audit verify FILE  verify a recovery audit log's hash chain
  keygen FILE        write a new 32-byte key file (mode 0600)
  top --url U        live view of a running daemon's agents, worst first
  agents --url U     list a running daemon's agents (--json: the /agents document)
  forensics show FILE  print a hang capture (--forensics-dir)

  -h, --help         print this help and exit
  --version          print the version and exit
"""

# command -> "module:function"; imported only when that command runs.
COMMANDS = {
    "watch": "varta.watch.cli:main",
    "demo": "varta.watch.demo:main",
    "audit": "varta.watch.audit:cli_main",
    "keygen": "varta.keys:keygen_main",
    "top": "varta.watch.top:top_main",
    "agents": "varta.watch.top:agents_main",
    "forensics": "varta.forensics:cli_main",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if args[0] == "--version":
        from ._varta import __version__

        sys.stdout.write(f"varta {__version__}\n")
        return 0
    target = COMMANDS.get(args[0])
    if target is None:
        sys.stderr.write(f"varta: unknown command {args[0]!r} (see --help)\n")
        return 2
    module, func = target.split(":")
    entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
    return entry(args[1:])


def usage_error(prog: str, message: str) -> int:
    """The one-line command-line error every varta command prints: exit 2."""
    sys.stderr.write(f"{prog}: {message} (see --help)\n")
    return 2


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ``argparse`` parser whose errors are one line naming what is wrong
    and pointing at ``--help`` (not argparse's usage block), exit 2."""
    import argparse

    class OneLineErrors(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise SystemExit(usage_error(self.prog, message))

    return OneLineErrors(prog=prog, description=description)
