#!/usr/bin/env bash
# Screenshot a report.html in headless Chromium, to check how it renders (tables, figures).
#   tools/screenshot_report.sh runs/demo/report/report.html out.png [width] [height]
# Needs a Chromium binary (Debian: `apt-get install chromium`). Nothing is fetched from the network.
set -euo pipefail
html=$(realpath "$1"); out=$2; width=${3:-1280}; height=${4:-4000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found: install it (apt-get install chromium)" >&2; exit 2; }
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-dev-shm-usage \
  --disable-extensions --no-first-run --hide-scrollbars --window-size="${width},${height}" \
  --screenshot="$(realpath -m "$out")" "file://${html}" 2>/dev/null
echo "wrote $out"
