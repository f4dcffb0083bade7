#!/usr/bin/env bash
# The main job: varta-watch on the default socket with a demo agent beating
# into it, every event printed as a line (python -m varta demo). Self-sufficient
# on a fresh machine: creates .venv, installs the build tool, builds the
# extension, runs the demo. Ctrl-C stops it.
#   bash scripts/demo.sh [--socket PATH] [--threshold-ms MS] [--interval S] [--duration S]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VARTA_VENV:-$PWD/.venv}

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating venv $venv" >&2
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
if ! command -v maturin >/dev/null || ! python -c 'import prometheus_client' 2>/dev/null; then
  echo "==> installing maturin, prometheus_client" >&2
  python -m pip install -q --disable-pip-version-check 'maturin>=1.5,<2' prometheus_client
fi
echo "==> building the extension" >&2
maturin develop -q >&2
exec python -m varta demo "$@"
