#!/usr/bin/env bash
# The browse page's size for the full VLGuard test set: the real test.json (gated: fetch it
# with `vlguard-ort fetch dataset`, or copy it to data/VLGuard/test.json; never commit it),
# synthetic answers and generated images of realistic sizes (examples/browse_size.rs says
# how they are made). Prints the size of the single-engine page (1,558 answers) and of the
# comparison page (3,116), split into thumbnails and the rest.
# Usage: scripts/browse_size.sh [THUMB_SIZE QUALITY]   (default: browse's, 200 and 75)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
meta=${VLGUARD_META:-data/VLGuard/test.json}
if [ ! -f "$meta" ]; then
    echo "error: $meta not found: run \`vlguard-ort fetch dataset\` or copy VLGuard's test.json there" >&2
    exit 2
fi
cargo run --release --locked --example browse_size -- "$meta" target/browse_size "$@"
