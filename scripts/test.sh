#!/usr/bin/env bash
# Runs every test: formatting, lints and `cargo test` for the whole workspace. Needs the
# ONNX Runtime library (fetched from PyPI by scripts/setup.sh, once) and, for the
# leaderboard's browser check, Debian's chromium (installed here when missing and we
# may). No network beyond the package registries, no GPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! ls .ort/lib/libonnxruntime.so.* >/dev/null 2>&1; then
  SETUP_SKIP_BUILD=1 scripts/setup.sh
fi
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing chromium for the leaderboard's browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will fail and say so" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
