#!/usr/bin/env bash
# Installs what zoogate needs, idempotently, on Debian 12 as root.
#   scripts/install-deps.sh build   compilers and libraries for the zoogate binary
#   scripts/install-deps.sh test    the above, plus what the test suite and benchmarks use
# Only packages that are missing are installed, so a second run does nothing.
set -euo pipefail

mode=${1:-build}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

build_packages=(
  cmake ninja-build g++ pkg-config
  libboost1.81-dev libssl-dev libzip-dev zlib1g-dev libyaml-cpp-dev prometheus-cpp-dev
  nlohmann-json3-dev libcli11-dev libexpected-dev
)
# prometheus brings promtool (alert rule checks and unit tests); python3-yaml reads the deploy/ manifests;
# valgrind checks memory use where a bug would not show in a plain run.
test_packages=(
  libgtest-dev libgmock-dev clang libclang-rt-14-dev valgrind
  python3 python3-torch python3-torchvision python3-numpy python3-requests python3-pip python3-distutils python3-yaml
  curl nginx openssl p7zip-full zip time prometheus
)

case "$mode" in
  build) wanted=("${build_packages[@]}") ;;
  test) wanted=("${build_packages[@]}" "${test_packages[@]}") ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

missing=()
for package in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Only promtool is used. Debian's prometheus package also enables a Prometheus server listening on
  # :9090, zoogate's admin port: when this script installed it, switch that server off.
  if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

# Node.js and npm run the real Hub client in the integration tests. Machines that already carry a
# Node.js build with npm keep it; others get Debian's.
if [[ "$mode" == test && -f "$here/tests/integration/package-lock.json" ]]; then
  if ! command -v npm >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
  fi
  # npm's own node_modules/.package-lock.json never equals package-lock.json (it leaves out the root
  # package), so a copy of the lockfile that was installed marks an up-to-date node_modules.
  stamp="$here/tests/integration/node_modules/.zoogate-installed-lock.json"
  if ! cmp -s "$here/tests/integration/package-lock.json" "$stamp"; then
    npm ci --prefix "$here/tests/integration" --no-audit --no-fund
    cp "$here/tests/integration/package-lock.json" "$stamp"
  fi
fi
