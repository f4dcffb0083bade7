#!/usr/bin/env bash
# Build the documentation (docs/ → site/) with mkdocs, strictly: any warning,
# a broken link or anchor included, fails the build.
#   bash scripts/docs.sh           build
#   bash scripts/docs.sh serve     live preview on 127.0.0.1:8000
# Uses the repo's .venv (as scripts/test.sh creates it) and installs mkdocs
# into it when missing. docs/configuration.md is generated: regenerate it with
# `python scripts/gen_config_docs.py` after changing a flag.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VARTA_VENV:-$PWD/.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import mkdocs' 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'mkdocs>=1.6,<2'
fi
if [ "${1:-build}" = serve ]; then
  exec "$venv/bin/python" -m mkdocs serve
fi
exec "$venv/bin/python" -m mkdocs build --strict --clean
