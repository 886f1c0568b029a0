#!/usr/bin/env bash
# Set up, build, make a small mixed corpus (with a few bad files), ingest it,
# and show the table.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sluice-target}
cargo build --release -p sluice
SLUICE="$CARGO_TARGET_DIR/release/sluice"
DEMO=${DEMO_DIR:-./demo}
rm -rf "$DEMO/lake"
"$SLUICE" sample-corpus "$DEMO/data" --files 400 --with-bad-files --with-media
set +e
"$SLUICE" ingest --table "$DEMO/lake/massive_video_lake" "$DEMO/data"
echo "(exit code $?: 0 = all files ingested, 2 = some files failed and are listed above)"
set -e
"$SLUICE" inspect "$DEMO/lake/massive_video_lake"
