#!/usr/bin/env bash
# Release artifacts into dist/, each one checked:
#   * the sdist (maturin sdist);
#   * abi3 release wheels for manylinux2014 (glibc 2.17) x86_64 and aarch64,
#     cross-built with zig (ziglang from PyPI) from this x86_64 machine;
#   * auditwheel show on each wheel: the manylinux_2_17 tag must be the one
#     auditwheel finds, and the wheel's own tags must be cp39-abi3 + that tag;
#   * the wheel carries both licence files and py.typed;
#   * the native-arch wheel installed into a fresh venv for every Python in
#     $VARTA_WHEEL_PYTHONS (default: the pyenv 3.9 and 3.13, the oldest and
#     newest here, plus 3.10-3.12 when present) and smoke-tested
#     (scripts/wheel_smoke.py: a beat into an observer, --version, a seal);
#   * sdist parity: the sdist is built and installed from source into a fresh
#     venv, and its seal cost (bench/seal.py) must be within 1.3x of the
#     wheel's (without .cargo/config.toml in the sdist it is ~2.8x).
# A summary is printed at the end and kept in dist/SUMMARY.txt.
#   bash scripts/wheels.sh            (VARTA_SKIP_SDIST_PARITY=1 skips the source build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dist=$root/dist
tools=$root/.venv-wheels
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# Own target dir: release cross builds do not wait on the dev build's lock.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/wheels}

step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf 'wheels.sh: FAIL: %s\n' "$*" >&2; exit 1; }
summary=()
note() { summary+=("$*"); printf '    %s\n' "$*" >&2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || fail "no version in Cargo.toml"

step "build tools in $tools (maturin, ziglang, auditwheel)"
[ -x "$tools/bin/python" ] || python3 -m venv "$tools"
"$tools/bin/python" -m pip install -q --disable-pip-version-check \
  'maturin>=1.5,<2' ziglang auditwheel
maturin=$tools/bin/maturin
# maturin finds zig as `python -m ziglang` through the first python on PATH.
export PATH="$tools/bin:$PATH"

targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu)
if command -v rustup >/dev/null; then
  for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$(rustup target list --installed)" || { step "rustup target add $t"; rustup target add "$t"; }
  done
fi

rm -rf "$dist"
mkdir -p "$dist"

step "sdist"
"$maturin" sdist -o "$dist"
sdist=$dist/varta-$version.tar.gz
[ -f "$sdist" ] || fail "no $sdist"
listing=$(tar tzf "$sdist")
for f in .cargo/config.toml LICENSE-MIT LICENSE-APACHE CHANGELOG.md; do
  grep -qx "varta-$version/$f" <<<"$listing" || fail "the sdist lacks $f"
done
note "sdist: $(basename "$sdist") (.cargo/config.toml, licences and changelog included)"

declare -A arch_of=([x86_64-unknown-linux-gnu]=x86_64 [aarch64-unknown-linux-gnu]=aarch64)
for t in "${targets[@]}"; do
  arch=${arch_of[$t]}
  step "wheel $t (release, manylinux2014, zig)"
  "$maturin" build --release --zig --compatibility manylinux2014 --target "$t" -o "$dist"
  # maturin names the legacy alias first: manylinux2014_<arch>.manylinux_2_17_<arch>
  whl=$dist/varta-$version-cp39-abi3-manylinux2014_${arch}.manylinux_2_17_${arch}.whl
  [ -f "$whl" ] || { ls "$dist" >&2; fail "expected wheel $(basename "$whl")"; }
  tag=$("$tools/bin/python" - "$whl" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    wheel = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
    print(" ".join(sorted(l.split(": ", 1)[1] for l in z.read(wheel).decode().splitlines() if l.startswith("Tag: "))))
EOF
)
  [ "$tag" = "cp39-abi3-manylinux2014_${arch} cp39-abi3-manylinux_2_17_${arch}" ] || fail "$(basename "$whl") tags: $tag"
  "$tools/bin/python" - "$whl" <<'EOF' || fail "$(basename "$whl") lacks licences, py.typed or the extension"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["licenses/LICENSE-MIT", "licenses/LICENSE-APACHE", "varta/py.typed", "varta/_varta.abi3.so"]
missing = [n for n in need if not any(x.endswith(n) for x in names)]
sys.exit(1 if missing else 0)
EOF
  audit=$("$tools/bin/auditwheel" show "$whl" 2>&1) || { echo "$audit" >&2; fail "auditwheel show $(basename "$whl")"; }
  echo "$audit" >&2
  tr -s ' \n' ' ' <<<"$audit" | grep -q "consistent with the following platform tag: \"manylinux_2_17_${arch}\"" \
    || fail "auditwheel does not find manylinux_2_17_${arch} for $(basename "$whl")"
  note "wheel: $(basename "$whl"): tags [$tag], auditwheel: manylinux_2_17_${arch} OK, licences + py.typed inside"
done

native=$(uname -m)
native_whl=$dist/varta-$version-cp39-abi3-manylinux2014_${native}.manylinux_2_17_${native}.whl
[ -f "$native_whl" ] || fail "no wheel for the native arch $native"

pythons=()
if [ -n "${VARTA_WHEEL_PYTHONS:-}" ]; then
  read -r -a pythons <<<"$VARTA_WHEEL_PYTHONS"
else
  for v in 3.9 3.10 3.11 3.12 3.13; do
    p=$(ls -d /root/.pyenv/versions/$v.*/bin/python$v 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$p" ] && pythons+=("$p")
  done
  [ ${#pythons[@]} -gt 0 ] || pythons=(python3)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for py in "${pythons[@]}"; do
  step "smoke test of $(basename "$native_whl") under $py"
  "$py" -m venv "$scratch/venv"
  "$scratch/venv/bin/python" -m pip install -q --disable-pip-version-check "$native_whl"
  line=$("$scratch/venv/bin/python" -I "$root/scripts/wheel_smoke.py" "$version") || { echo "$line" >&2; fail "smoke test under $py"; }
  note "smoke: $line"
  if [ "$("$scratch/venv/bin/python" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" = True ] && [ ! -d "$scratch/wheel-venv" ]; then
    mv "$scratch/venv" "$scratch/wheel-venv"
  else
    rm -rf "$scratch/venv"
  fi
done

if [ "${VARTA_SKIP_SDIST_PARITY:-0}" != 1 ]; then
  if [ ! -d "$scratch/wheel-venv" ]; then
    python3 -m venv "$scratch/wheel-venv"
    "$scratch/wheel-venv/bin/python" -m pip install -q --disable-pip-version-check "$native_whl"
  fi
  step "sdist parity: building $(basename "$sdist") from source (release; takes minutes)"
  python3 -m venv "$scratch/sdist-venv"
  # A clean environment for the source build: no RUSTFLAGS that would
  # replace build.rustflags from the sdist's .cargo/config.toml, and a target
  # directory of its own, so nothing the wheel builds compiled is reused.
  env -u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
    CARGO_TARGET_DIR="$root/target/sdist-check" \
    "$scratch/sdist-venv/bin/python" -m pip install -q --disable-pip-version-check --no-binary varta "$sdist"
  "$scratch/sdist-venv/bin/python" -I "$root/scripts/wheel_smoke.py" "$version" >/dev/null || fail "sdist install smoke test"
  seal() { "$1" -I "$root/bench/seal.py" --json | "$1" -c 'import json,sys; print(round(json.load(sys.stdin)["seal_ns"]))'; }
  # Interleaved runs, best of three each, so machine load hits both alike.
  w=(); s=()
  for _ in 1 2 3; do
    w+=("$(seal "$scratch/wheel-venv/bin/python")")
    s+=("$(seal "$scratch/sdist-venv/bin/python")")
  done
  wbest=$(printf '%s\n' "${w[@]}" | sort -n | head -n1)
  sbest=$(printf '%s\n' "${s[@]}" | sort -n | head -n1)
  ratio=$(python3 -c "print(f'{$sbest / $wbest:.2f}')")
  note "sdist parity: seal ns wheel ${w[*]} (best $wbest), sdist ${s[*]} (best $sbest), ratio $ratio (limit 1.30)"
  python3 -c "import sys; sys.exit(0 if $sbest <= 1.3 * $wbest else 1)" \
    || fail "the sdist build seals ${ratio}x slower than the wheel: the sdist does not build like the wheel"
fi

{
  echo "varta $version release artifacts ($(date -u +%Y-%m-%dT%H:%MZ))"
  printf '%s\n' "${summary[@]}"
} | tee "$dist/SUMMARY.txt"
echo "wheels.sh: all checks passed"
