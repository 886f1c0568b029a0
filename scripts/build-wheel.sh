#!/usr/bin/env bash
# Build the sluice wheel into dist/: the Python client plus the shipping
# `sluice` binary (maturin "bin" bindings). Install it where Rust is not:
#   pip install dist/sluice-*.whl
# With the `sluice` binary come its normalizer binaries, one of which
# (`sluice-normalizer-media`) links the system's FFmpeg, so the wheel is
# tagged for this platform (linux_x86_64) and runs where FFmpeg's shared
# libraries are installed (Debian 12: deploy/docker/install.sh runtime).
# Options are passed to `maturin build` (e.g. --profile dev for a quick one);
# SLUICE_WHEEL_DIR puts the wheel elsewhere than dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sluice-target}
MATURIN=${MATURIN:-$(command -v maturin || echo "${SLUICE_VENV:-/opt/sluice-venv}/bin/maturin")}
if [ ! -x "$MATURIN" ]; then
  echo "build-wheel: maturin not found; pip install 'maturin>=1.16,<2' (or run scripts/setup.sh)" >&2
  exit 1
fi
out=$(realpath -m "${SLUICE_WHEEL_DIR:-dist}")
# The shipping profile (link-time optimized; Cargo.toml) unless told otherwise.
profile=(--profile dist --strip)
for arg in "$@"; do
  case "$arg" in --profile*|--release) profile=() ;; esac
done
# maturin reads python/pyproject.toml (which names cli/Cargo.toml) from there.
(cd python && "$MATURIN" build --out "$out" --compatibility linux "${profile[@]}" "$@")
ls -l "$out"/sluice-*.whl
