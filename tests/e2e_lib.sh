# Shared by the end-to-end test scripts (source it): a work directory, the
# processes a test started (stopped by PID on exit), failure reporting with
# the logs, and waiting for log lines.

work=$(mktemp -d)
# name -> PID of every process the test started.
declare -A pids=()
# SIGTERM first (the services shut down gracefully), SIGKILL after 10 s.
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for log in "$work"/*.log; do echo "--- $log" >&2; tail -20 "$log" >&2; done
  exit 1
}

# Waits until LOG has a line matching REGEX.
wait_for_line() {
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no line matching '$2' in $1"
}

# Waits for "<NAME> listening on HOST:PORT" in LOG and prints the port.
wait_for_port() {
  local log=$1 name=$2 port
  for _ in $(seq 1 300); do
    port=$(sed -n "s/^$name listening on [^:]*:\([0-9]*\).*/\1/p" "$log" | head -1)
    if [ -n "$port" ]; then echo "$port"; return 0; fi
    sleep 0.1
  done
  fail "$name did not report its port"
}

# A free TCP port on loopback (for a service that must come back on the
# same port after a restart).
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts $COORDINATOR on $port with state in $work/state and data in
# $DATA_ROOT; each start logs to coordinator<N>.log ($coordinator_log), so a
# restart keeps the earlier logs.
starts=0
start_coordinator() {
  starts=$((starts + 1))
  coordinator_log="$work/coordinator$starts.log"
  "$COORDINATOR" --port "$port" --metrics_port 0 --listen_host 127.0.0.1 \
    --state_dir "$work/state" --data_dir "$DATA_ROOT" --threads 1 \
    --heartbeat_interval_ms 300 --worker_timeout_ms 1500 \
    2>"$coordinator_log" &
  pids[coordinator]=$!
  wait_for_line "$coordinator_log" "listening on"
}
