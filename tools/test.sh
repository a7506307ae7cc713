#!/usr/bin/env bash
# The test suite: unit tests plus end-to-end tests on the tiny Yi-VL fixtures. What CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ensure-deps.sh
swift build --build-tests
exec swift test --skip-build --disable-swift-testing "$@"
