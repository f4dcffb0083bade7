"""The daemon's resident-memory budget (docs/operations.md#resources): what it
must not import, and the allocator setting its process makes. The memory
itself is measured by bench/rss.py, not asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_daemon_imports_none_of_the_heavy_modules() -> None:
    # 0.3-1 MB each, and the daemon needs none of them (varta.panic and the
    # audit verifier load on first use).
    heavy = ["dataclasses", "inspect", "ast", "typing", "ipaddress", "hashlib", "json",
             "argparse", "varta.panic", "varta.watch.audit_verify"]  # fmt: skip
    code = (
        "import sys, varta.watch.cli, varta.watch.loop, varta.watch.serving; "
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_lazy_names_still_resolve() -> None:
    code = (
        "import varta, varta.watch.audit as audit; "
        "print(varta.StatusLike, varta.panic.__name__, audit.verify.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "typing.Union[varta._types.Status,", "int,", "str]", "varta.panic",
        "varta.watch.audit_verify",
    ]  # fmt: skip


def test_the_daemon_process_fixes_the_mmap_threshold(tmp_path: Path) -> None:
    code = f"""
import varta._varta as native
calls = []
real = native.set_mmap_threshold
native.set_mmap_threshold = lambda n: calls.append((n, real(n))) or calls[-1][1]
from varta.watch.cli import main
rc = main(["--socket", {str(tmp_path / "s.sock")!r}, "--threshold-ms", "1000",
           "--shutdown-after-secs", "1"])
print(rc, calls)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 [(65536, True)]"  # glibc: accepted


def test_every_exported_name_exists_at_run_time() -> None:
    # Type-only names (protocols, aliases under TYPE_CHECKING) must stay out
    # of __all__, or ``from module import *`` fails.
    code = """
import importlib, pkgutil, varta
missing = []
for m in pkgutil.walk_packages(varta.__path__, "varta."):
    if m.name.endswith("__main__"):
        continue
    mod = importlib.import_module(m.name)
    missing += [f"{m.name}.{n}" for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)]
print(" ".join(missing))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
