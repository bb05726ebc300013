#!/bin/sh
# Runs a libFuzzer binary for a bounded time on a temporary copy of its seed
# corpus (the repository's corpus is never modified), as the ctest entries
# fuzz_idx and fuzz_job_spec do (tests/fuzz_tests.cmake).
#
#   run_fuzzer.sh FUZZER SEED_CORPUS ARTIFACT_DIR SECONDS [LIBFUZZER_FLAG...]
#
# Exit 0: no crash, leak, timeout or out-of-memory in SECONDS; prints the
# number of executions ("Done N runs in S second(s)") and the final stats.
# Exit 1: the fuzzer found something; the input that triggered it is in
# ARTIFACT_DIR (crash-*, leak-*, timeout-*, oom-*), the report is printed,
# and the whole log is ARTIFACT_DIR/last-run.log.
# Exit 77 (skipped): the fuzzer binary is missing.
set -eu

if [ $# -lt 4 ]; then
  echo "usage: $0 FUZZER SEED_CORPUS ARTIFACT_DIR SECONDS [FLAG...]" >&2
  exit 2
fi
fuzzer=$1
seeds=$2
artifacts=$3
seconds=$4
shift 4

if [ ! -x "$fuzzer" ]; then
  echo "SKIP: $fuzzer was not built (build the target pnn_fuzzers)"
  exit 77
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pnn-fuzz-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/corpus" "$artifacts"
cp "$seeds"/* "$work/corpus/"
log="$artifacts/last-run.log"

# libFuzzer's own exit codes (77 for a crash, 70 for a timeout) would read as
# "skipped" to ctest; any failure is 1 here.
status=0
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 \
  -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$@" "$work/corpus" >"$log" 2>&1 || status=$?

grep -E '^(INFO: Seed|INFO: Loaded|#[0-9]+[[:space:]]+INITED|Done [0-9]+ runs|stat::)' \
  "$log" || true
if [ "$status" -ne 0 ]; then
  echo "FAIL: $(basename "$fuzzer") exited with status $status; report:"
  tail -n 60 "$log"
  echo "Inputs that failed (reproduce: $fuzzer FILE):"
  ls -l "$artifacts" | grep -E ' (crash|leak|timeout|oom|slow-unit)-' || true
  exit 1
fi
runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log")
echo "PASS: $(basename "$fuzzer"): ${runs:-?} executions in ${seconds} s, no crash"
