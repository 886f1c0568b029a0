#!/usr/bin/env bash
# Set up, build once, run every test (unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sluice-target}
export SLUICE_PYTHON=${SLUICE_PYTHON:-${SLUICE_VENV:-/opt/sluice-venv}/bin/python}
# The tests drive the binary's test hooks (failpoints, slow or crashing
# files); release builds lack them.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --features sluice/testing --no-fail-fast
else
  cargo test --workspace --features sluice/testing --no-fail-fast
fi
