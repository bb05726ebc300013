#!/usr/bin/env bash
# End-to-end: the real binaries on loopback. A coordinator and two workers
# start on free ports; pnnctl submits a Fashion-MNIST job, watches it, reads
# the result as JSON and downloads the model. Asserts the job SUCCEEDED
# with a learned accuracy and that the two segments trained on different
# workers at overlapping times. Stops every process it started.
#
# Usage: e2e_cluster_test.sh COORDINATOR_BIN WORKER_BIN PNNCTL_BIN
set -euo pipefail
COORDINATOR=$1
WORKER=$2
PNNCTL=$3
DATA_ROOT=${PNN_DATA_ROOT:-/usr/share/datasets}

source "$(dirname "$0")/e2e_lib.sh"

"$COORDINATOR" --port 0 --metrics_port 0 --listen_host 127.0.0.1 --state_dir "$work/state" \
  --data_dir "$DATA_ROOT" --threads 1 2>"$work/coordinator.log" &
pids[coordinator]=$!
port=$(wait_for_port "$work/coordinator.log" pnn-coordinator)
target="127.0.0.1:$port"

for i in 1 2; do
  "$WORKER" --coordinator "$target" --port 0 --metrics_port 0 --listen_host 127.0.0.1 \
    --data_dir "$DATA_ROOT" --threads 1 --name "e2e-$i" \
    2>"$work/worker$i.log" &
  pids[worker$i]=$!
  wait_for_port "$work/worker$i.log" pnn-worker >/dev/null
done

"$PNNCTL" --coordinator "$target" health >/dev/null || fail "health check"

cat >"$work/job.json" <<'JSON'
{
  "name": "e2e",
  "training": {"epochs": 2},
  "dataset": {"path": "fashion-mnist", "train_limit": 6000, "test_limit": 2000}
}
JSON

# Both workers must be registered before the job, so that its two segments
# start together.
for _ in $(seq 1 100); do
  registered=$(grep -l "registered" "$work"/worker*.log 2>/dev/null | wc -l)
  [ "$registered" -ge 2 ] && break
  sleep 0.1
done

job=$("$PNNCTL" --coordinator "$target" submit "$work/job.json") ||
  fail "submit"
[[ "$job" == job-* ]] || fail "submit printed '$job', not a job id"

"$PNNCTL" --coordinator "$target" watch "$job" >"$work/watch.out" ||
  fail "watch exited $? (job did not succeed)"
grep -q "accuracy" "$work/watch.out" || fail "watch printed no result table"

"$PNNCTL" --coordinator "$target" get "$job" --output json >"$work/job.out" ||
  fail "get"
/usr/bin/python3 - "$work/job.out" <<'PY' || fail "job status assertions"
import json, sys
from datetime import datetime

job = json.load(open(sys.argv[1]))
def t(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))
assert job["state"] == "JOB_STATE_SUCCEEDED", job["state"]
accuracy = job["test"]["accuracy"]
assert 0.7 < accuracy <= 1.0, accuracy
s0, s1 = job["segments"]
assert s0["state"] == s1["state"] == "TASK_STATE_SUCCEEDED"
assert s0["worker_id"] != s1["worker_id"], (s0["worker_id"], s1["worker_id"])
assert t(s0["start_time"]) < t(s1["end_time"]) and t(s1["start_time"]) < t(s0["end_time"]), \
    "segment training intervals do not overlap"
assert int(job["bytes_sent"]) > 0 and int(job["bytes_received"]) > 0
print(f"e2e: accuracy {accuracy:.4f}, segments on {s0['worker_id']} and {s1['worker_id']}")
PY

# The job's log, oldest first, ends with its success; both workers are
# listed, idle again.
"$PNNCTL" --coordinator "$target" logs "$job" >"$work/logs.out" || fail "logs"
grep -q "dispatched to worker-" "$work/logs.out" ||
  fail "logs: no dispatch in: $(cat "$work/logs.out")"
tail -n 1 "$work/logs.out" | grep -q "job succeeded" ||
  fail "logs: the last line is not the job's success: $(tail -n 1 "$work/logs.out")"
"$PNNCTL" --coordinator "$target" workers >"$work/workers.out" || fail "workers"
[ "$(grep -c "e2e-[12]" "$work/workers.out")" -eq 2 ] ||
  fail "workers: not both listed: $(cat "$work/workers.out")"
[ "$(grep -c " idle " "$work/workers.out")" -eq 2 ] ||
  fail "workers: not both idle: $(cat "$work/workers.out")"
"$PNNCTL" --coordinator "$target" workers -o json >"$work/workers.json" ||
  fail "workers -o json"
/usr/bin/python3 - "$work/workers.json" <<'PY' || fail "workers json"
import json, sys
workers = json.load(open(sys.argv[1]))["workers"]
assert len(workers) == 2, workers
assert all(w["info"]["address"].startswith("127.0.0.1:") for w in workers), workers
PY

"$PNNCTL" --coordinator "$target" download "$job" -o "$work/model.safetensors" \
  >/dev/null || fail "download"
/usr/bin/python3 - "$work/model.safetensors" <<'PY' || fail "safetensors file"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
assert shapes["0.weight"] == [256, 784], shapes
assert shapes["10.weight"] == [10, 256], shapes
end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
assert 8 + n + end == len(data)
PY

# A job naming a data set that does not exist is refused up front.
if "$PNNCTL" --coordinator "$target" submit --dataset no-such-data \
    >"$work/bad.out" 2>&1; then
  fail "a job with a missing data set was accepted"
fi
grep -q "INVALID_ARGUMENT" "$work/bad.out" || fail "missing data set: $(cat "$work/bad.out")"

echo "e2e cluster test passed"
