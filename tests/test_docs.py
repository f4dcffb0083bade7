"""docs/: the configuration reference is generated from the flag table and
current, every flag ``varta-watch -h`` prints is documented there, and every
documentation citation in code points at a docs page and heading that exist.

(``scripts/test.sh`` also builds the site with ``mkdocs build --strict``, which
fails on any warning, broken links and anchors included.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG_MD = DOCS / "configuration.md"


def test_configuration_reference_is_generated_and_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr + out.stdout


def help_flags() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "varta", "watch", "-h"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    flags = re.findall(r"^\s+(?:-h, )?(--[a-z0-9][a-z0-9-]*)", out.stdout, re.M)
    assert len(flags) > 50, out.stdout  # the parse found the flag list
    return flags


def test_every_flag_in_help_is_in_the_configuration_reference() -> None:
    text = CONFIG_MD.read_text()
    missing = [f for f in help_flags() if f"`{f}`" not in text]
    assert not missing, f"flags in varta-watch -h but not in docs/configuration.md: {missing}"


def test_a_flag_missing_from_the_reference_is_caught(tmp_path: Path) -> None:
    """The check above really fails when a flag is undocumented: drop one row and re-check."""
    text = CONFIG_MD.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `--hw-watchdog`"))
    stale = tmp_path / "configuration.md"
    stale.write_text(text.replace(row + "\n", ""))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check",
         "--output", str(stale)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "stale" in out.stderr
    assert "`--hw-watchdog`" not in stale.read_text()


def anchors(page: Path) -> set[str]:
    """Heading ids as mkdocs (Python-Markdown's toc) makes them."""
    found: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"`([^`]*)`", r"\1", m.group(1))
            slug = slugify(text, "-")
            base, n = slug, 1
            while slug in found:
                slug = f"{base}_{n}"
                n += 1
            found.add(slug)
    return found


SOURCES = ("rust", "python", "tests", "bench")
# Names of the spec files, or a bare section sign and number (which would cite them).
OLD_STYLE = re.compile(r"observer\.md|vlp\.md|agent\.md|INTERFACES\.md|spec\s§|§\s?\d")
CITATION = re.compile(r"docs/([\w-]+\.md)((?:#[\w-]+)?)((?:,\s*#[\w-]+)*)")


def cited_lines() -> list[tuple[str, int, str]]:
    out = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".rs", ".py", ".pyi", ".md") or "__pycache__" in path.parts:
                continue
            if path == Path(__file__).resolve():
                continue  # this file's deliberately bad examples
            for no, line in enumerate(path.read_text().splitlines(), 1):
                if OLD_STYLE.search(line) or "docs/" in line:
                    out.append((str(path.relative_to(ROOT)), no, line))
    return out


def citation_problems(lines: list[tuple[str, int, str]]) -> list[str]:
    bad = []
    pages: dict[str, set[str]] = {}
    for where, no, line in lines:
        for m in OLD_STYLE.finditer(line):
            # an old-style name is fine only as part of a docs/ path
            if not line[: m.start()].endswith("docs/"):
                bad.append(f"{where}:{no}: cites {m.group(0)} outside docs/: {line.strip()}")
        for m in CITATION.finditer(line):
            page = DOCS / m.group(1)
            if not page.is_file():
                bad.append(f"{where}:{no}: no page docs/{m.group(1)}")
                continue
            known = pages.setdefault(m.group(1), anchors(page))
            wanted = [a for a in re.findall(r"#([\w-]+)", m.group(2) + m.group(3))]
            bad += [
                f"{where}:{no}: docs/{m.group(1)} has no heading #{a}"
                for a in wanted
                if a not in known
            ]
    return bad


def test_spec_citations_in_code_point_into_docs() -> None:
    lines = cited_lines()
    assert len(lines) > 80  # the code cites the docs throughout
    bad = citation_problems(lines)
    assert not bad, "\n".join(bad)


def test_citation_check_catches_bad_citations() -> None:
    lines = [
        ("a.rs", 1, "//! The tracker (`docs/observer.md#tracker`, #stall-detection)."),
        ("b.rs", 2, "//! Old style (`observer" + ".md` §4)."),  # split: no real citation here
        ("c.py", 3, "# see docs/observer.md#no-such-heading"),
        ("d.py", 4, "# see docs/nowhere.md#tracker"),
        ("e.py", 5, "# see docs/observer.md#tracker, #not-here-either"),
        ("f.rs", 6, "// the wrap rule (" + "\u00a7" + "4.2)"),
    ]
    bad = citation_problems(lines)
    assert sorted({b.split(":")[0] for b in bad}) == ["b.rs", "c.py", "d.py", "e.py", "f.rs"], bad


def test_anchor_helper_matches_mkdocs_slugs() -> None:
    found = anchors(DOCS / "troubleshooting.md")
    assert "the-kernels-datagram-queue" in found and "key-files" in found
