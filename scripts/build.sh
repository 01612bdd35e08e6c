#!/usr/bin/env bash
# Configures and builds zoogate into build/ (Release with debug info, warnings as errors), without
# the tests unless asked (-DZOOGATE_BUILD_TESTS=ON, as test.sh does): they need the packages of
# `install-deps.sh test`. Later arguments override earlier ones, so the caller's choice stands.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmake -S "$here" -B "$here/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZOOGATE_WERROR=ON \
  -DZOOGATE_BUILD_TESTS=OFF "$@" >/dev/null
cmake --build "$here/build"
