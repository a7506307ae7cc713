#!/usr/bin/env bash
# Renders a `vlq verify --html` report in headless Chromium and saves a screenshot, to see the page
# as a person would (charts, thumbnails). Installs Debian's chromium when missing.
#   tools/render_report.sh report.html screenshot.png [WIDTHxHEIGHT]
set -euo pipefail
report=${1:?report.html}; shot=${2:?screenshot.png}; size=${3:-1200x2400}
if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -qi wqy; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null
fi
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="${size/x/,}" \
  --screenshot="$(realpath -m "$shot")" "file://$(realpath "$report")" 2>/dev/null
[[ -s $shot ]] || { echo "render_report: chromium wrote no screenshot" >&2; exit 1; }
echo "wrote $shot"
