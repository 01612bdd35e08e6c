#!/usr/bin/env bash
# Installs what the tests need, builds everything and runs every test: unit and integration tests
# (CTest, which prints how many ran and passed), then short libFuzzer runs under ASan and UBSan.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/install-deps.sh" test
"$here/scripts/build.sh" -DZOOGATE_BUILD_TESTS=ON
ctest --test-dir "$here/build" --output-on-failure -j2 --timeout 1200

# Fuzz targets need clang's libFuzzer; their CTest entries replay the seed corpus and fuzz briefly.
cmake -S "$here" -B "$here/build-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DZOOGATE_BUILD_FUZZERS=ON -DZOOGATE_WERROR=ON >/dev/null
cmake --build "$here/build-fuzz" --target fuzzers
ctest --test-dir "$here/build-fuzz" --output-on-failure -j2 -L fuzz
