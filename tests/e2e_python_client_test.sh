#!/usr/bin/env bash
# client/python/pnn_client.py against a real coordinator that serves TLS
# (test CA from scripts/make-test-ca) and requires a bearer token, with a
# worker on mutual TLS and the same token. The client submits and watches a
# small job to SUCCEEDED with --tls_ca and --token_file, then with
# PNN_AUTH_TOKEN and a client certificate; without the token it gets
# UNAUTHENTICATED (exit 2), and without TLS it cannot connect (exit 2).
# Exit 77 (skipped) when Debian's python3-grpcio is missing.
#
# Usage: e2e_python_client_test.sh COORDINATOR_BIN WORKER_BIN SOURCE_DIR
set -euo pipefail
COORDINATOR=$1
WORKER=$2
SOURCE_DIR=$3
DATA_ROOT=${PNN_DATA_ROOT:-/usr/share/datasets}
PYTHON=/usr/bin/python3
CLIENT="$SOURCE_DIR/client/python/pnn_client.py"

if ! "$PYTHON" -c "import grpc, google.protobuf" 2>/dev/null; then
  echo "SKIP: $PYTHON cannot import grpc (Debian packages python3-grpcio" \
    "python3-protobuf; scripts/setup installs them)"
  exit 77
fi

source "$(dirname "$0")/e2e_lib.sh"

certs="$work/certs"
"$SOURCE_DIR/scripts/make-test-ca" "$certs" >/dev/null
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"

"$COORDINATOR" --port 0 --metrics_port 0 --listen_host 127.0.0.1 \
  --state_dir "$work/state" --data_dir "$DATA_ROOT" --threads 1 \
  --tls_cert "$certs/coordinator.pem" --tls_key "$certs/coordinator.key" \
  --tls_ca "$certs/ca.pem" --token_file "$work/token" \
  2>"$work/coordinator.log" &
pids[coordinator]=$!
port=$(wait_for_port "$work/coordinator.log" pnn-coordinator)
target="127.0.0.1:$port"

"$WORKER" --coordinator "$target" --port 0 --metrics_port 0 \
  --listen_host 127.0.0.1 --data_dir "$DATA_ROOT" --threads 1 \
  --tls_cert "$certs/worker.pem" --tls_key "$certs/worker.key" \
  --tls_ca "$certs/ca.pem" --token_file "$work/token" \
  2>"$work/worker.log" &
pids[worker]=$!
wait_for_port "$work/worker.log" pnn-worker >/dev/null
wait_for_line "$work/worker.log" "registered"

cat >"$work/job.json" <<'JSON'
{
  "name": "python-client",
  "model": {"hidden_widths": [32, 32], "cut_after_layers": [1]},
  "training": {"epochs": 1},
  "dataset": {"path": "fashion-mnist", "train_limit": 1000, "test_limit": 500}
}
JSON
client() {
  env -u PNN_AUTH_TOKEN "$PYTHON" "$CLIENT" "$work/job.json" \
    --coordinator "$target" --proto_dir "$SOURCE_DIR/proto" "$@"
}

client --tls_ca "$certs/ca.pem" --token_file "$work/token" \
  >"$work/file.out" 2>&1 || fail "TLS + --token_file: exit $? ($(cat "$work/file.out"))"
grep -q "JOB_STATE_SUCCEEDED" "$work/file.out" || fail "no SUCCEEDED: $(cat "$work/file.out")"

PNN_AUTH_TOKEN=$(cat "$work/token") "$PYTHON" "$CLIENT" "$work/job.json" \
  --coordinator "$target" --proto_dir "$SOURCE_DIR/proto" \
  --tls_ca "$certs/ca.pem" --tls_cert "$certs/client.pem" \
  --tls_key "$certs/client.key" >"$work/env.out" 2>&1 ||
  fail "TLS + PNN_AUTH_TOKEN + client certificate: exit $? ($(cat "$work/env.out"))"
grep -q "JOB_STATE_SUCCEEDED" "$work/env.out" || fail "no SUCCEEDED: $(cat "$work/env.out")"

status=0
client --tls_ca "$certs/ca.pem" >"$work/notoken.out" 2>&1 || status=$?
[ "$status" -eq 2 ] || fail "without the token: exit $status, not 2"
grep -q "UNAUTHENTICATED" "$work/notoken.out" ||
  fail "without the token: $(cat "$work/notoken.out")"

status=0
client --token_file "$work/token" --timeout 5 >"$work/plain.out" 2>&1 || status=$?
[ "$status" -eq 2 ] || fail "plaintext to a TLS coordinator: exit $status, not 2"

status=0
client --tls_ca "$certs/ca.pem" --token_file "$work/no-such-file" \
  >"$work/badfile.out" 2>&1 || status=$?
[ "$status" -eq 1 ] && grep -q "cannot read the token file" "$work/badfile.out" ||
  fail "a missing token file: exit $status ($(cat "$work/badfile.out"))"

grep -q "$(cat "$work/token")" "$work"/*.out "$work"/*.log &&
  fail "the token appears in an output or log"
echo "e2e Python client test passed"
