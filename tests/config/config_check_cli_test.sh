#!/bin/sh
# `zoogate config check FILE` and `zoogate config defaults`, run as a user runs them.
# Usage: config_check_cli_test.sh PATH/TO/zoogate
set -u
zoogate=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
failures=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# expect CODE STDERR_SUBSTRING COMMAND...: runs COMMAND, checks its exit code and (unless the substring
# is empty) that its standard error contains the substring.
expect() {
  code=$1 needle=$2
  shift 2
  "$@" >out.txt 2>err.txt
  got=$?
  [ "$got" -eq "$code" ] || fail "$* exited with $got, not $code; stderr: $(cat err.txt)"
  if [ -n "$needle" ] && ! grep -qF -- "$needle" err.txt; then
    fail "$*: stderr lacks '$needle': $(cat err.txt)"
  fi
}

# The printed defaults are a valid configuration.
expect 0 "" "$zoogate" config defaults
cp out.txt defaults.yaml
grep -q '^listen: "127.0.0.1:8080"' defaults.yaml || fail "config defaults lacks the listen key: $(cat defaults.yaml)"
expect 0 "" "$zoogate" config check defaults.yaml
[ "$(cat out.txt)" = "ok: defaults.yaml" ] || fail "config check printed '$(cat out.txt)'"

# A relative policy_file is found next to the configuration, whatever the working directory.
mkdir conf
printf 'listen: "127.0.0.1:0"\npolicy_file: policy.yaml\n' >conf/zoogate.yaml
printf 'version: "2026-01-01.1"\nactions: {forbidden_global: block}\n' >conf/policy.yaml
expect 0 "" "$zoogate" config check conf/zoogate.yaml
[ "$(cat out.txt)" = "ok: conf/zoogate.yaml" ] || fail "config check printed '$(cat out.txt)'"

# Errors name the file, line and column.
printf 'listen: "127.0.0.1:0"\nio_threads: 2\nio_thread: 4\n' >conf/bad.yaml
expect 1 "conf/bad.yaml:3:1: unknown key 'io_thread'" "$zoogate" config check conf/bad.yaml
[ -s out.txt ] && fail "config check printed '$(cat out.txt)' for a bad file"

# ... including those of the policy file the configuration names.
printf 'policy_file: broken-policy.yaml\n' >conf/uses-broken-policy.yaml
printf 'version: "1"\nlimit: {max_opcodes: 5}\n' >conf/broken-policy.yaml
expect 1 "conf/broken-policy.yaml:2:1: unknown key 'limit'" "$zoogate" config check conf/uses-broken-policy.yaml
printf 'policy_file: absent-policy.yaml\n' >conf/uses-absent-policy.yaml
expect 1 "absent-policy.yaml" "$zoogate" config check conf/uses-absent-policy.yaml

expect 1 "missing.yaml" "$zoogate" config check missing.yaml
expect 1 "" "$zoogate" config check
expect 1 "" "$zoogate" config

if [ "$failures" -ne 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "all config CLI checks passed"
