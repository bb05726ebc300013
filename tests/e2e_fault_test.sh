#!/usr/bin/env bash
# Fault tolerance with the real binaries on loopback, over several rounds.
# Each round submits a new job and, while it trains:
#  1. kills the worker training segment 1 with SIGKILL in the middle of
#     the segment; a replacement worker joins and the segment is retried;
#  2. kills the coordinator with SIGKILL while the retried segment trains
#     and restarts it on the same port and state directory.
# Every job must SUCCEED with an accuracy in the normal range, the
# restarted coordinator must restore every job submitted so far, finished
# jobs keep their state and model, and every job is listed at the end.
# Prints a summary: faults injected and survived, jobs submitted and
# succeeded. Stops every process it started.
#
# Usage: e2e_fault_test.sh COORDINATOR_BIN WORKER_BIN PNNCTL_BIN
# PNN_FAULT_ROUNDS=N sets the number of rounds (default 2, as in ctest);
# each round takes about 20-40 s on a 2-core machine.
set -euo pipefail
COORDINATOR=$1
WORKER=$2
PNNCTL=$3
DATA_ROOT=${PNN_DATA_ROOT:-/usr/share/datasets}
ROUNDS=${PNN_FAULT_ROUNDS:-2}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "PNN_FAULT_ROUNDS must be >= 1" >&2; exit 1; }

source "$(dirname "$0")/e2e_lib.sh"

port=$(free_port)
target="127.0.0.1:$port"
workers_started=0
start_worker() {  # a new worker w<N>, logging to w<N>.log
  workers_started=$((workers_started + 1))
  local name="w$workers_started"
  "$WORKER" --coordinator "$target" --port 0 --metrics_port 0 \
    --listen_host 127.0.0.1 --data_dir "$DATA_ROOT" --threads 1 --name "$name" \
    2>>"$work/$name.log" &
  pids[$name]=$!
  wait_for_line "$work/$name.log" "registered"
}
ctl() { "$PNNCTL" --coordinator "$target" "$@"; }
job_field() {  # ID PYTHON-EXPRESSION over `job`
  ctl get "$1" --output json | /usr/bin/python3 -c "import json, sys; job = json.load(sys.stdin); print($2)"
}
# Waits until PYTHON-CONDITION over `job` holds for job ID.
wait_for_job() {  # ID CONDITION WHAT
  for _ in $(seq 1 600); do
    [ "$(job_field "$1" "bool($2)")" = True ] && return 0
    sleep 0.1
  done
  fail "$1: $3 never happened"
}
# The name (w<N>) of the worker listening on HOST:PORT.
worker_at() {
  local log
  log=$(grep -l "^pnn-worker listening on $1\$" "$work"/w*.log | head -1)
  [ -n "$log" ] || fail "no worker listens on $1"
  basename "$log" .log
}
check_accuracy() {  # ID
  local accuracy
  accuracy=$(job_field "$1" "job['test']['accuracy']")
  /usr/bin/python3 -c "import sys; sys.exit(0 if 0.7 < $accuracy <= 1 else 1)" ||
    fail "$1: accuracy $accuracy out of range"
  echo "$accuracy"
}

start_coordinator
start_worker
start_worker
cat >"$work/job.json" <<'JSON'
{"training": {"epochs": 8},
 "dataset": {"path": "fashion-mnist", "train_limit": 12000, "test_limit": 2000}}
JSON

faults=0
survived=0
jobs=()
for round in $(seq 1 "$ROUNDS"); do
  job=$(ctl submit "$work/job.json") || fail "round $round: submit"
  jobs+=("$job")

  # 1. SIGKILL the worker in the middle of segment 1 (the longer one),
  # once it has finished an epoch and sent its resumable state (checkpoint
  # bytes); a replacement joins.
  wait_for_job "$job" "job['segments'][0].get('epochs') and int(job['segments'][0]['checkpoint_bytes']) > 0 and job['segments'][0]['state'] == 'TASK_STATE_RUNNING'" \
    "segment 1 finishing an epoch"
  address=$(job_field "$job" "job['segments'][0]['worker_address']")
  victim=$(worker_at "$address")
  kill -KILL "${pids[$victim]}"
  wait "${pids[$victim]}" 2>/dev/null || true
  unset "pids[$victim]"
  faults=$((faults + 1))
  start_worker

  # 2. SIGKILL the coordinator while the retried segment trains, restart it
  # on the same state directory.
  wait_for_job "$job" "job['segments'][0]['attempts'] >= 2 and job['segments'][0]['state'] == 'TASK_STATE_RUNNING'" \
    "the retry of segment 1 starting"
  state=$(job_field "$job" "job['state']")
  [ "$state" = JOB_STATE_RUNNING ] || fail "round $round: $job is $state before the coordinator is killed"
  kill -KILL "${pids[coordinator]}"
  wait "${pids[coordinator]}" 2>/dev/null || true
  faults=$((faults + 1))
  start_coordinator
  grep -q "restored $round jobs" "$coordinator_log" ||
    fail "round $round: the restarted coordinator did not restore $round jobs"
  for earlier in "${jobs[@]:0:${#jobs[@]}-1}"; do
    [ "$(job_field "$earlier" "job['state']")" = JOB_STATE_SUCCEEDED ] ||
      fail "round $round: finished job $earlier lost its state"
    ctl download "$earlier" -o "$work/model.safetensors" >/dev/null ||
      fail "round $round: finished job $earlier lost its model"
  done

  ctl watch "$job" >"$work/watch$round.out" ||
    fail "round $round: $job did not succeed after a worker and the coordinator were killed"
  attempts=$(job_field "$job" "job['segments'][0]['attempts']")
  [ "$attempts" -ge 2 ] || fail "round $round: segment 1 was not retried (attempts $attempts)"
  # The retries continued from the last finished epoch, not from scratch.
  resumed=$(job_field "$job" "job['segments'][0]['resumed_from_epoch']")
  [ "$resumed" -ge 1 ] || fail "round $round: segment 1 restarted from scratch (resumed_from_epoch $resumed)"
  accuracy=$(check_accuracy "$job")
  survived=$((survived + 2))
  echo "round $round: $job: killed $victim mid-segment (retried, $attempts attempts, resumed from epoch $resumed)" \
       "and the coordinator mid-job (restarted); SUCCEEDED, accuracy $accuracy"
done

# Nothing submitted is lost: every job is listed and SUCCEEDED.
listed=$(ctl list --all --output json | /usr/bin/python3 -c "
import json, sys
jobs = json.load(sys.stdin).get('jobs', [])
print(' '.join(sorted(j['job_id'] for j in jobs if j['state'] == 'JOB_STATE_SUCCEEDED')))")
expected=$(printf '%s\n' "${jobs[@]}" | sort | tr '\n' ' ' | sed 's/ $//')
[ "$listed" = "$expected" ] || fail "listed succeeded jobs '$listed', expected '$expected'"
succeeded=$(echo "$listed" | wc -w)
echo "e2e fault summary: rounds $ROUNDS, faults injected $faults, survived $survived," \
     "jobs submitted ${#jobs[@]}, succeeded $succeeded"
echo "e2e fault test passed"
