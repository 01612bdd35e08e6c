#!/usr/bin/env bash
# run_fuzzer.sh BINARY WORK_CORPUS SEED_CORPUS SECONDS
# Fuzzes from the committed seeds (kept read-only) into a scratch corpus; any crash, leak, sanitizer
# report or timeout fails the test.
set -euo pipefail
binary=$1 work=$2 seeds=$3 seconds=$4
mkdir -p "$work"
exec "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
  -print_final_stats=1 -artifact_prefix="$work/" "$work" "$seeds"
