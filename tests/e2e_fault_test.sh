#!/usr/bin/env bash
# Fault tolerance with the real binaries on loopback:
#  1. a worker is killed with SIGKILL in the middle of its segment: the
#     segment is retried on the other worker and the job still SUCCEEDS;
#  2. the coordinator is killed with SIGKILL mid-job and restarted on the
#     same port and state directory: every job is still listed and the
#     running one finishes.
# Stops every process it started.
#
# Usage: e2e_fault_test.sh COORDINATOR_BIN WORKER_BIN PNNCTL_BIN
set -euo pipefail
COORDINATOR=$1
WORKER=$2
PNNCTL=$3
DATA_ROOT=${PNN_DATA_ROOT:-/usr/share/datasets}

source "$(dirname "$0")/e2e_lib.sh"

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port=$(free_port)
target="127.0.0.1:$port"
starts=0
start_coordinator() {  # each start logs to coordinator<N>.log
  starts=$((starts + 1))
  coordinator_log="$work/coordinator$starts.log"
  "$COORDINATOR" --port "$port" --metrics_port 0 --listen_host 127.0.0.1 \
    --state_dir "$work/state" --data_dir "$DATA_ROOT" --threads 1 \
    --heartbeat_interval_ms 300 --worker_timeout_ms 1500 \
    2>"$coordinator_log" &
  pids[coordinator]=$!
  wait_for_line "$coordinator_log" "listening on"
}
start_worker() {  # NAME
  "$WORKER" --coordinator "$target" --port 0 --metrics_port 0 \
    --listen_host 127.0.0.1 --data_dir "$DATA_ROOT" --threads 1 --name "$1" \
    2>>"$work/$1.log" &
  pids[$1]=$!
  wait_for_line "$work/$1.log" "registered"
}
ctl() { "$PNNCTL" --coordinator "$target" "$@"; }
job_field() {  # ID PYTHON-EXPRESSION over `job`
  ctl get "$1" --output json | /usr/bin/python3 -c "import json, sys; job = json.load(sys.stdin); print($2)"
}
wait_for_epoch() {  # ID SEGMENT: until the segment reported an epoch
  for _ in $(seq 1 600); do
    n=$(job_field "$1" "len(job['segments'][$2].get('epochs', []))")
    [ "$n" -ge 1 ] && return 0
    sleep 0.1
  done
  fail "segment $2 of $1 never finished an epoch"
}

start_coordinator
start_worker w1
start_worker w2
cat >"$work/job.json" <<'JSON'
{"training": {"epochs": 4},
 "dataset": {"path": "fashion-mnist", "train_limit": 12000, "test_limit": 2000}}
JSON

# 1. SIGKILL a worker in the middle of segment 1 (the longer one).
job1=$(ctl submit "$work/job.json")
wait_for_epoch "$job1" 0
victim=$(job_field "$job1" "job['segments'][0]['worker_id']")
victim_name=$(grep -l "as worker $victim " "$work"/w*.log | xargs -n1 basename | sed 's/\.log$//')
[ -n "$victim_name" ] || fail "cannot tell which worker runs segment 1"
kill -KILL "${pids[$victim_name]}"
wait "${pids[$victim_name]}" 2>/dev/null || true
unset "pids[$victim_name]"
ctl watch "$job1" >"$work/watch1.out" || fail "job 1 did not succeed after a worker was killed"
attempts=$(job_field "$job1" "job['segments'][0]['attempts']")
accuracy=$(job_field "$job1" "job['test']['accuracy']")
[ "$attempts" -ge 2 ] || fail "segment 1 was not retried (attempts $attempts)"
/usr/bin/python3 -c "import sys; sys.exit(0 if 0.7 < $accuracy <= 1 else 1)" ||
  fail "job 1 accuracy $accuracy out of range"
echo "fault 1: killed $victim_name mid-segment; retried, accuracy $accuracy"
start_worker w3

# 2. SIGKILL the coordinator mid-job, restart it on the same state.
job2=$(ctl submit "$work/job.json")
wait_for_epoch "$job2" 0
kill -KILL "${pids[coordinator]}"
wait "${pids[coordinator]}" 2>/dev/null || true
start_coordinator
grep -q "restored 2 jobs" "$coordinator_log" || fail "jobs not restored"
[ "$(job_field "$job1" "job['state']")" = JOB_STATE_SUCCEEDED ] ||
  fail "the finished job lost its state"
ctl download "$job1" -o "$work/model1.safetensors" >/dev/null ||
  fail "the finished job lost its model"
ctl watch "$job2" >"$work/watch2.out" ||
  fail "job 2 did not finish after the coordinator restarted"
accuracy=$(job_field "$job2" "job['test']['accuracy']")
/usr/bin/python3 -c "import sys; sys.exit(0 if 0.7 < $accuracy <= 1 else 1)" ||
  fail "job 2 accuracy $accuracy out of range"
listed=$(ctl list --output json | /usr/bin/python3 -c "import json, sys; print(len(json.load(sys.stdin)['jobs']))")
[ "$listed" -eq 2 ] || fail "expected 2 jobs listed, got $listed"
echo "fault 2: coordinator killed mid-job and restarted; job finished, accuracy $accuracy"
echo "e2e fault test passed"
