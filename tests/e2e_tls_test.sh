#!/usr/bin/env bash
# TLS with the real binaries on loopback: a test CA (scripts/make-test-ca),
# a coordinator serving TLS and a worker requiring client certificates
# (mutual TLS). A job runs end to end over TLS; plaintext clients, and TLS
# clients without a certificate towards the worker, are refused.
#
# Usage: e2e_tls_test.sh COORDINATOR_BIN WORKER_BIN PNNCTL_BIN
set -euo pipefail
COORDINATOR=$1
WORKER=$2
PNNCTL=$3
DATA_ROOT=${PNN_DATA_ROOT:-/usr/share/datasets}
source "$(dirname "$0")/e2e_lib.sh"

certs="$work/certs"
"$(dirname "$0")/../scripts/make-test-ca" "$certs" >/dev/null

"$COORDINATOR" --port 0 --metrics_port 0 --listen_host 127.0.0.1 \
  --state_dir "$work/state" --data_dir "$DATA_ROOT" --threads 1 \
  --tls_cert "$certs/coordinator.pem" --tls_key "$certs/coordinator.key" \
  --tls_ca "$certs/ca.pem" 2>"$work/coordinator.log" &
pids[coordinator]=$!
port=$(wait_for_port "$work/coordinator.log" pnn-coordinator)
target="127.0.0.1:$port"

"$WORKER" --coordinator "$target" --port 0 --metrics_port 0 \
  --listen_host 127.0.0.1 --data_dir "$DATA_ROOT" --threads 1 \
  --tls_cert "$certs/worker.pem" --tls_key "$certs/worker.key" \
  --tls_ca "$certs/ca.pem" 2>"$work/worker.log" &
pids[worker]=$!
worker_port=$(wait_for_port "$work/worker.log" pnn-worker)
wait_for_line "$work/worker.log" "registered"

tls=(--tls_ca "$certs/ca.pem")
mtls=(--tls_ca "$certs/ca.pem" --tls_cert "$certs/client.pem" --tls_key "$certs/client.key")

"$PNNCTL" --coordinator "$target" "${tls[@]}" health >/dev/null ||
  fail "TLS health check of the coordinator"
if "$PNNCTL" --coordinator "$target" --timeout 5s health >/dev/null 2>&1; then
  fail "a plaintext client reached the TLS coordinator"
fi
if "$PNNCTL" --coordinator "127.0.0.1:$worker_port" "${tls[@]}" --timeout 5s \
    health >/dev/null 2>&1; then
  fail "a client without a certificate reached the worker"
fi
"$PNNCTL" --coordinator "127.0.0.1:$worker_port" "${mtls[@]}" health \
  >/dev/null || fail "mutual TLS health check of the worker"

job=$("$PNNCTL" --coordinator "$target" "${tls[@]}" submit --dataset fashion-mnist \
  --train-limit 2000 --test-limit 500 --epochs 1) || fail "submit over TLS"
"$PNNCTL" --coordinator "$target" "${tls[@]}" watch "$job" >"$work/watch.out" ||
  fail "the job did not succeed over TLS"
echo "e2e TLS test passed"
