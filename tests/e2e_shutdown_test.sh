#!/usr/bin/env bash
# Graceful shutdown with the real binaries on loopback. pnn-worker and
# pnn-coordinator document SIGTERM/SIGINT as a graceful stop with exit
# status 0 (worker/main.cc, coordinator/main.cc):
#  1. SIGTERM to a worker in the middle of its segment: it exits promptly
#     with status 0 and its segment goes back to the queue (not FAILED);
#  2. SIGTERM to the coordinator while another worker trains: it exits
#     promptly with status 0; that worker keeps running;
#  3. the coordinator restarted on the same --state_dir lists the job, the
#     surviving worker registers again, a new worker joins, and the job
#     SUCCEEDS; SIGTERM then stops the workers with status 0 too.
# Stops every process it started.
#
# Usage: e2e_shutdown_test.sh COORDINATOR_BIN WORKER_BIN PNNCTL_BIN
set -euo pipefail
COORDINATOR=$1
WORKER=$2
PNNCTL=$3
DATA_ROOT=${PNN_DATA_ROOT:-/usr/share/datasets}
# Longest accepted time from SIGTERM to exit, in seconds.
STOP_LIMIT=10

source "$(dirname "$0")/e2e_lib.sh"

port=$(free_port)
target="127.0.0.1:$port"
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
wait_for_job() {  # ID CONDITION WHAT
  for _ in $(seq 1 600); do
    [ "$(job_field "$1" "bool($2)")" = True ] && return 0
    sleep 0.1
  done
  fail "$1: $3 never happened"
}
worker_at() {  # HOST:PORT -> the name of the worker listening there
  local log
  log=$(grep -l "^pnn-worker listening on $1\$" "$work"/w*.log | head -1)
  [ -n "$log" ] || fail "no worker listens on $1"
  basename "$log" .log
}
# Sends SIGTERM to process NAME and checks that it exits within STOP_LIMIT
# seconds with status 0; sets `took` to the seconds it took. (Not in a
# subshell: `wait` needs the process to be this shell's child.)
terminate() {  # NAME
  local pid=${pids[$1]} start status=0
  start=$(date +%s.%N)
  kill -TERM "$pid"
  for _ in $(seq 1 $((STOP_LIMIT * 20))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$pid" 2>/dev/null && fail "$1 still runs ${STOP_LIMIT} s after SIGTERM"
  wait "$pid" || status=$?
  took=$(/usr/bin/python3 -c "import time; print(f'{time.time() - $start:.2f}')")
  unset "pids[$1]"
  [ "$status" -eq 0 ] || fail "$1 exited with status $status after SIGTERM"
}

start_coordinator
start_worker w1
start_worker w2
cat >"$work/job.json" <<'JSON'
{"training": {"epochs": 8},
 "dataset": {"path": "fashion-mnist", "train_limit": 12000, "test_limit": 2000}}
JSON
job=$(ctl submit "$work/job.json") || fail "submit"

# 1. SIGTERM the worker of segment 1 once it has finished an epoch.
wait_for_job "$job" "job['segments'][0].get('epochs') and job['segments'][0]['state'] == 'TASK_STATE_RUNNING'" \
  "segment 1 finishing an epoch"
victim=$(worker_at "$(job_field "$job" "job['segments'][0]['worker_address']")")
survivor=w1
[ "$victim" = w1 ] && survivor=w2
terminate "$victim"
grep -q "SIGTERM received, shutting down" "$work/$victim.log" ||
  fail "$victim did not log its graceful shutdown"
echo "worker $victim: SIGTERM mid-segment, exited 0 after $took s"
wait_for_job "$job" "job['segments'][0]['state'] in ('TASK_STATE_QUEUED', 'TASK_STATE_RUNNING') and job['segments'][0]['attempts'] >= 1 and job['segments'][0].get('error')" \
  "segment 1 going back to the queue"
state=$(job_field "$job" "job['state']")
[ "$state" = JOB_STATE_RUNNING ] || fail "after the worker's SIGTERM the job is $state"

# 2. SIGTERM the coordinator while the other worker trains.
wait_for_job "$job" "any(s['state'] == 'TASK_STATE_RUNNING' for s in job['segments'])" \
  "a segment training on $survivor"
# Attempts each segment should end with if nothing else fails: as now for a
# segment that is running or done, one more for one waiting in the queue.
attempts_expected=$(job_field "$job" "[s['attempts'] + (s['state'] == 'TASK_STATE_QUEUED') for s in job['segments']]")
terminate coordinator
grep -q "SIGTERM received, shutting down" "$coordinator_log" ||
  fail "the coordinator did not log its graceful shutdown"
echo "coordinator: SIGTERM mid-job, exited 0 after $took s"
sleep 1
kill -0 "${pids[$survivor]}" 2>/dev/null || fail "$survivor died with the coordinator"

# 3. Restart on the same state directory: the job is there and finishes.
start_coordinator
grep -q "restored 1 jobs" "$coordinator_log" || fail "the job was not restored"
listed=$(ctl list --all --output json | /usr/bin/python3 -c "import json, sys; print(' '.join(j['job_id'] for j in json.load(sys.stdin).get('jobs', [])))")
[ "$listed" = "$job" ] || fail "listed '$listed' after the restart, expected $job"
start_worker w3
ctl watch "$job" >"$work/watch.out" || fail "the job did not succeed after the restart"
accuracy=$(job_field "$job" "job['test']['accuracy']")
/usr/bin/python3 -c "import sys; sys.exit(0 if 0.7 < $accuracy <= 1 else 1)" ||
  fail "accuracy $accuracy out of range"
# Its channel may still be in gRPC's reconnect back-off when the job ends:
# give the survivor's next heartbeats a few seconds to be answered.
for _ in $(seq 1 150); do
  grep -q "re-registered" "$work/$survivor.log" && break
  sleep 0.1
done
grep -q "re-registered" "$work/$survivor.log" ||
  fail "$survivor did not register again with the restarted coordinator"
# A graceful stop of the coordinator is no fault of the tasks it cancels:
# like a crash, it costs no attempt (a segment it interrupted trains again
# with the attempt the restart gives back).
attempts_after=$(job_field "$job" "[s['attempts'] for s in job['segments']]")
[ "$attempts_after" = "$attempts_expected" ] ||
  fail "attempts per segment: $attempts_after, expected $attempts_expected:" \
       "the coordinator's SIGTERM counted against the job"
echo "restarted coordinator: $job SUCCEEDED, accuracy $accuracy," \
     "attempts per segment $attempts_after"

# Idle workers and the coordinator stop gracefully as well.
for name in "$survivor" w3 coordinator; do
  terminate "$name"
  echo "$name: SIGTERM when idle, exited 0 after $took s"
done
echo "e2e shutdown test passed"
