#!/usr/bin/env bash
# Prints, one a line and sorted, the Debian packages that hold the shared libraries an executable
# loads (its whole dependency closure, as the dynamic loader resolves it on this machine).
#   scripts/runtime-packages.sh build/proxy/zoogate
# The container image's build stage runs it so that the runtime stage installs exactly these runtime
# packages and none of the -dev packages the build needed. Exits 1 if a library belongs to no package.
set -euo pipefail

if (($# != 1)) || [[ ! -f "$1" ]]; then
  echo "usage: $0 EXECUTABLE" >&2
  exit 2
fi

# The package that owns a file. Debian 12 merged /lib into /usr/lib, so the loader's path and the
# path dpkg recorded can differ by the /usr prefix; try the path as given, resolved, and both forms.
owner() {
  local path=$1 candidate resolved
  resolved=$(readlink -f "$path")
  for candidate in "$path" "$resolved" "/usr${path#/usr}" "${path#/usr}" "/usr${resolved#/usr}" "${resolved#/usr}"; do
    if dpkg-query -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1; then
      return 0
    fi
  done
  return 1
}

status=0
declare -A packages=()
# ldd prints "name => /path (address)" for resolved libraries, "/path (address)" for the loader,
# "name => not found" for missing ones, and nothing with a path for the vDSO.
while read -r line; do
  if [[ "$line" == *"not found"* ]]; then
    echo "$0: unresolved library: $line" >&2
    status=1
    continue
  fi
  library=$(awk '{ for (i = 1; i <= NF; ++i) if ($i ~ /^\//) { print $i; exit } }' <<<"$line")
  [[ -n "$library" ]] || continue
  if package=$(owner "$library") && [[ -n "$package" ]]; then
    packages["$package"]=1
  else
    echo "$0: no Debian package holds $library" >&2
    status=1
  fi
done < <(ldd "$1")

if ((${#packages[@]})); then
  printf '%s\n' "${!packages[@]}" | sort
fi
exit "$status"
