#!/usr/bin/env bash
# The whole test suite, self-sufficient on a fresh machine:
# venv + tools, lints, cargo test (core, no libpython), extension build, docs
# build, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${VARTA_VENV:-$root/.venv}

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  step "creating venv $venv"
  python3 -m venv "$venv"
fi

# Upstream's pure-Python client (PyPI varta 0.2.0) in a side venv: it has the
# same import name, so it cannot share ours. tests/test_upstream_interop.py
# runs it against our Observer and, with VARTA_REQUIRE_UPSTREAM=1, fails
# rather than skips without it.
upstream_req='varta==0.2.0'
upstream_venv=$root/.venv-upstream
upstream_probe="import varta, sys; sys.exit(varta.__version__ != '0.2.0')"
if ! "$upstream_venv/bin/python" -I -c "$upstream_probe" 2>/dev/null; then
  step "creating $upstream_venv ($upstream_req)"
  python3 -m venv --clear "$upstream_venv"
  "$upstream_venv/bin/python" -m pip install -q --disable-pip-version-check "$upstream_req"
  "$upstream_venv/bin/python" -I -c "$upstream_probe"
fi
export VARTA_UPSTREAM_PYTHON=$upstream_venv/bin/python
export VARTA_REQUIRE_UPSTREAM=1

# shellcheck disable=SC1091
. "$venv/bin/activate"
step "installing test tools"
python -m pip install -q --disable-pip-version-check \
  'maturin>=1.5,<2' pytest pytest-timeout cryptography prometheus_client uvloop mypy ruff 'mkdocs>=1.6,<2' \
  'selenium>=4.10,<5'

# Prometheus (server + promtool) for the metrics integration tests.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing prometheus (Debian package)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >/dev/null 2>&1 \
      || echo "warning: could not install prometheus; its integration tests will fail"
  fi
fi

# Alertmanager for the fleet test (tests/test_fleet_alertmanager.py, ops/fleet).
if ! command -v prometheus-alertmanager >/dev/null || ! command -v amtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing prometheus-alertmanager (Debian package)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager; } >/dev/null 2>&1 \
      || echo "warning: could not install prometheus-alertmanager; the fleet test will fail"
  fi
fi

# logrotate for the proving ground's rotation-under-load test (ops/logrotate).
if ! command -v logrotate >/dev/null && [ ! -x /usr/sbin/logrotate ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing logrotate (Debian package)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends logrotate; } >/dev/null 2>&1 \
      || echo "warning: could not install logrotate; the rotation test will fail"
  fi
fi

# Chromium and its WebDriver for the status page's browser tests
# (tests/test_live_view_browser.py, driven by Selenium; Debian packages, no
# browser download).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing chromium + chromium-driver (Debian packages)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >/dev/null 2>&1 \
      || echo "warning: could not install chromium; the status page's browser tests will fail"
  fi
fi

step "rust lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings

step "cargo test (varta-core with its bench drivers, no libpython)"
cargo test -p varta-core --all-features -q

step "building the extension (dev profile)"
maturin develop -q

step "python lints"
ruff check python tests bench scripts
ruff format --check python tests bench scripts
mypy
python -m mypy.stubtest varta._varta --allowlist "$root/tests/stubtest-allowlist.txt"

step "docs (mkdocs build --strict: no warnings, no broken links or anchors)"
bash scripts/docs.sh

step "pytest"
python -m pytest -q --timeout=180 -p no:cacheprovider "$@"
