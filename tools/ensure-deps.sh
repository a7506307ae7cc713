#!/usr/bin/env bash
# Installs what vlq needs on a Debian machine when it is missing: the C libraries (through apt, found
# by SwiftPM with pkg-config), python3 with numpy for tools/. Idempotent and quiet when all is there.
set -euo pipefail

apt_packages=(pkg-config libopenblas-dev libzstd-dev libxxhash-dev libpng-dev libjpeg62-turbo-dev zstd xxhash)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "ensure-deps: installing ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v python3 >/dev/null; then
  echo "ensure-deps: installing python3" >&2
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get install -y -qq python3 python3-numpy >/dev/null
fi
if ! python3 -c "import numpy" 2>/dev/null; then
  echo "ensure-deps: installing numpy" >&2
  python3 -m pip install -q numpy 2>/dev/null || python3 -m pip install -q --break-system-packages numpy
fi

if ! command -v swift >/dev/null; then
  for d in /opt/swift/usr/bin /opt/swift/bin; do [[ -x $d/swift ]] && export PATH="$d:$PATH"; done
  command -v swift >/dev/null || { echo "ensure-deps: no Swift toolchain on PATH (Swift 6 is needed)" >&2; exit 1; }
fi
