#!/usr/bin/env bash
# Renders a results folder's HTML leaderboard in headless Chromium and writes a screenshot,
# to look at the chart by eye. Usage: scripts/check_report_browser.sh [RESULTS_DIR] [OUT.png]
# Needs Debian's chromium (`apt-get install chromium`); the page itself needs no network.
set -euo pipefail
results=${1:-tests/fixtures/report/results}
out=${2:-leaderboard.png}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ! -x /usr/bin/chromium ]; then
    echo "error: /usr/bin/chromium not found: apt-get install chromium" >&2
    exit 2
fi
cargo run -q -- leaderboard "$results" --with-paper --format html --out "$tmp/leaderboard.html"
/usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --force-device-scale-factor=1 --user-data-dir="$tmp/profile" \
    --screenshot="$(realpath -m "$out")" --window-size=1200,900 "file://$tmp/leaderboard.html" \
    2>/dev/null
echo "wrote $out"
