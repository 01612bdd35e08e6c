#!/usr/bin/env bash
# Configures and builds zoogate into build/ (Release with debug info, warnings as errors).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmake -S "$here" -B "$here/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZOOGATE_WERROR=ON "$@" >/dev/null
cmake --build "$here/build"
