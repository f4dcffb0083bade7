#!/usr/bin/env bash
# The main job: varta-watch on the default socket with a demo agent beating
# into it, every event printed as a line (python -m varta demo). Self-sufficient
# on a fresh machine: creates .venv, installs the build tool, builds the
# extension, runs the demo. Ctrl-C stops it.
#   bash scripts/demo.sh [--socket PATH] [--threshold-ms MS] [--interval S] [--duration S]
# The first run says what it is doing, one line per step, and shows the Rust
# compile progressing; later runs skip the build when the Rust sources, the
# lock file and the build configuration are unchanged, and print nothing of it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VARTA_VENV:-$PWD/.venv}

step() { printf '==> %s\n' "$*" >&2; }

# Follow a build's output: keep it all in $1 (shown only if the build fails)
# and show the compile progressing: on a terminal one line rewritten in place
# per crate; otherwise a line every tenth crate and every 15 s of one crate.
progress() {
  local log=$1 n=0 line start=$SECONDS crate="" shown=$SECONDS
  show() {
    if [ -t 2 ]; then
      printf '\r\033[K    compiling: %d crates, %ds, now %s' "$n" $((SECONDS - start)) "$crate" >&2
    else
      printf '    compiling: %d crates, %ds, now %s\n' "$n" $((SECONDS - start)) "$crate" >&2
    fi
    shown=$SECONDS
  }
  while true; do
    if IFS= read -r -t 15 line; then
      printf '%s\n' "$line" >>"$log"
      if [[ $line =~ ^[[:space:]]*Compiling[[:space:]]+([^[:space:]]+) ]]; then
        n=$((n + 1))
        crate=${BASH_REMATCH[1]}
        if [ -t 2 ] || [ $((n % 10)) = 1 ]; then show; fi
      fi
    elif [ $? -gt 128 ]; then
      # nothing for 15 s: a long crate (varta-core, pyo3) is still compiling
      if [ -n "$crate" ] && [ $((SECONDS - shown)) -ge 15 ]; then show; fi
    else
      break
    fi
  done
  [ -t 2 ] && [ "$n" -gt 0 ] && printf '\r\033[K' >&2
  printf '    built: %d crates compiled in %ds\n' "$n" $((SECONDS - start)) >&2
}

if [ ! -x "$venv/bin/python" ]; then
  step "creating venv $venv"
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
if ! command -v maturin >/dev/null; then
  step "installing maturin (pip)"
  python -m pip install -q --disable-pip-version-check 'maturin>=1.5,<2'
fi

# The Python sources are installed in editable mode: only Rust changes need a rebuild.
stamp_file=$venv/.varta-demo-build
stamp=$({
  cat Cargo.toml Cargo.lock pyproject.toml .cargo/config.toml
  find rust -type f \( -name '*.rs' -o -name Cargo.toml \) -print0 | sort -z | xargs -0 cat
} | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ] || ! python -c 'import varta._varta' 2>/dev/null; then
  step "building the Rust extension into $venv (dev profile; the first build takes a few minutes)"
  log=$(mktemp)
  if ! maturin develop 2>&1 | progress "$log"; then
    cat "$log" >&2
    rm -f "$log"
    echo "demo.sh: the build failed (output above)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$stamp" >"$stamp_file"
  step "starting the demo (Ctrl-C stops it)"
fi
exec python -m varta demo "$@"
