#!/usr/bin/env bash
# End-to-end: the model a user takes away. A coordinator and two workers
# (real binaries, loopback, free ports) train a small tanh job on a
# Fashion-MNIST subset; pnnctl downloads the safetensors file;
# examples/load_model.py loads it into a plain torch.nn.Sequential, tests it
# on the same test rows and must report pnn's test accuracy to 4 decimals.
# Its ONNX export is checked with python3-onnx and evaluated (a small numpy
# interpreter of its Gemm/Tanh graph) to the same accuracy.
# Exit 77 (skipped) only when Debian's python3-torch is not installed.
#
# Usage: e2e_model_test.sh COORDINATOR_BIN WORKER_BIN PNNCTL_BIN SOURCE_DIR
set -euo pipefail
COORDINATOR=$1
WORKER=$2
PNNCTL=$3
SOURCE_DIR=$4
DATA_ROOT=${PNN_DATA_ROOT:-/usr/share/datasets}
PYTHON=/usr/bin/python3

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "SKIP: $PYTHON cannot import torch (Debian package python3-torch;" \
    "scripts/setup installs it)"
  exit 77
fi

source "$(dirname "$0")/e2e_lib.sh"

"$COORDINATOR" --port 0 --metrics_port 0 --listen_host 127.0.0.1 \
  --state_dir "$work/state" --data_dir "$DATA_ROOT" --threads 1 \
  2>"$work/coordinator.log" &
pids[coordinator]=$!
port=$(wait_for_port "$work/coordinator.log" pnn-coordinator)
target="127.0.0.1:$port"
for i in 1 2; do
  "$WORKER" --coordinator "$target" --port 0 --metrics_port 0 \
    --listen_host 127.0.0.1 --data_dir "$DATA_ROOT" --threads 1 \
    --name "model-$i" 2>"$work/worker$i.log" &
  pids[worker$i]=$!
  wait_for_port "$work/worker$i.log" pnn-worker >/dev/null
done

cat >"$work/job.json" <<'JSON'
{
  "name": "model-export",
  "model": {"hidden_widths": [64, 32, 32], "activation": "ACTIVATION_TANH",
            "cut_after_layers": [2]},
  "training": {"epochs": 3},
  "dataset": {"path": "fashion-mnist", "train_limit": 6000, "test_limit": 1500}
}
JSON
job=$("$PNNCTL" --coordinator "$target" submit "$work/job.json") || fail "submit"
"$PNNCTL" --coordinator "$target" watch "$job" >"$work/watch.out" ||
  fail "watch exited $? (job did not succeed)"
"$PNNCTL" --coordinator "$target" get "$job" --output json >"$work/job.json.out" ||
  fail "get"
"$PNNCTL" --coordinator "$target" download "$job" -o "$work/model.safetensors" \
  >/dev/null || fail "download"

"$PYTHON" "$SOURCE_DIR/examples/load_model.py" "$work/model.safetensors" \
  --data_dir "$DATA_ROOT/fashion-mnist" --onnx "$work/model.onnx" \
  --output json >"$work/load.out" 2>"$work/load.log" || fail "load_model.py"

"$PYTHON" - "$work/job.json.out" "$work/load.out" "$work/model.safetensors" \
  "$work/model.onnx" "$SOURCE_DIR/examples" "$DATA_ROOT/fashion-mnist" <<'PY' ||
import json, sys
job_path, load_path, model_path, onnx_path, examples, data_dir = sys.argv[1:]
job = json.load(open(job_path))
loaded = json.load(open(load_path))
assert job["state"] == "JOB_STATE_SUCCEEDED", job["state"]
pnn_accuracy = job["test"]["accuracy"]
assert 0.5 < pnn_accuracy <= 1.0, pnn_accuracy
assert loaded["samples"] == 1500, loaded
assert loaded["job_id"] == job["job_id"], (loaded, job["job_id"])
assert round(loaded["accuracy"], 4) == round(pnn_accuracy, 4), \
    f"load_model.py {loaded['accuracy']} != pnn {pnn_accuracy}"

# The metadata describes the job.
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, examples)
import load_model
tensors, metadata = load_model.read_safetensors(model_path)
assert sorted(tensors) == ["0.bias", "0.weight", "2.bias", "2.weight",
                           "4.bias", "4.weight", "6.bias", "6.weight"], sorted(tensors)
assert metadata["widths"] == "784,64,32,32,10", metadata["widths"]
assert metadata["activation"] == "tanh"
assert metadata["num_classes"] == "10"
assert json.loads(metadata["job_spec"])["name"] == "model-export"

# The ONNX file: valid, and the same accuracy when evaluated.
import numpy as np
import onnx
from onnx import numpy_helper
graph_model = onnx.load(onnx_path)
onnx.checker.check_model(graph_model)
graph = graph_model.graph
values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
x, y = load_model.load_test_split(data_dir, metadata)
values[graph.input[0].name] = x.numpy()
for node in graph.node:
    a = [values[name] for name in node.input]
    if node.op_type == "Gemm":
        attrs = {at.name: at for at in node.attribute}
        w = a[1].T if attrs.get("transB") and attrs["transB"].i else a[1]
        out = a[0] @ w + a[2]
    elif node.op_type == "Tanh":
        out = np.tanh(a[0])
    else:
        raise AssertionError(f"unexpected ONNX op {node.op_type}")
    values[node.output[0]] = out
logits = values[graph.output[0].name]
onnx_accuracy = float((logits.argmax(1) == y.numpy()).mean())
assert round(onnx_accuracy, 4) == round(pnn_accuracy, 4), (onnx_accuracy, pnn_accuracy)
print(f"e2e model: pnn {pnn_accuracy:.4f}, load_model.py {loaded['accuracy']:.4f}, "
      f"ONNX {onnx_accuracy:.4f} on {loaded['samples']} samples")
PY
  fail "model assertions"

cat >"$work/cnn.json" <<'JSON'
{
  "name": "cnn-export",
  "model": {
    "layers": [
      {"conv2d": {"out_channels": 8, "kernel": 5, "padding": 2}},
      {"max_pool": {"kernel": 2}},
      {"conv2d": {"out_channels": 16, "kernel": 3, "padding": 1}},
      {"max_pool": {"kernel": 2}},
      {"dropout": {"p": 0.25}},
      {"flatten": {}},
      {"linear": {"out_features": 32}},
      {"linear": {}}
    ],
    "cut_after_layers": [7]
  },
  "training": {"epochs": 3},
  "dataset": {"path": "fashion-mnist", "train_limit": 10000, "test_limit": 1000}
}
JSON
cnn=$("$PNNCTL" --coordinator "$target" submit "$work/cnn.json") ||
  fail "submit (cnn)"
"$PNNCTL" --coordinator "$target" watch "$cnn" >"$work/cnn-watch.out" ||
  fail "watch exited $? (cnn job did not succeed)"
"$PNNCTL" --coordinator "$target" get "$cnn" --output json \
  >"$work/cnn-job.json.out" || fail "get (cnn)"
"$PNNCTL" --coordinator "$target" get "$cnn" >"$work/cnn-get.out" ||
  fail "get (cnn, table)"
grep -q "1x28x28 > conv 8k5 > max_pool 2" "$work/cnn-get.out" ||
  fail "pnnctl get does not describe the layer list: $(cat "$work/cnn-get.out")"
"$PNNCTL" --coordinator "$target" download "$cnn" \
  -o "$work/cnn.safetensors" >/dev/null || fail "download (cnn)"
"$PYTHON" "$SOURCE_DIR/examples/load_model.py" "$work/cnn.safetensors" \
  --data_dir "$DATA_ROOT/fashion-mnist" --output json \
  >"$work/cnn-load.out" 2>"$work/cnn-load.log" || fail "load_model.py (cnn)"

"$PYTHON" - "$work/cnn-job.json.out" "$work/cnn-load.out" \
  "$work/cnn.safetensors" "$SOURCE_DIR/examples" "$DATA_ROOT/fashion-mnist" <<'PY' ||
import json, sys
job_path, load_path, model_path, examples, data_dir = sys.argv[1:]
job = json.load(open(job_path))
loaded = json.load(open(load_path))
assert job["state"] == "JOB_STATE_SUCCEEDED", job["state"]
pnn_accuracy = job["test"]["accuracy"]
assert 0.5 < pnn_accuracy <= 1.0, pnn_accuracy
assert round(loaded["accuracy"], 4) == round(pnn_accuracy, 4), \
    f"load_model.py {loaded['accuracy']} != pnn {pnn_accuracy}"

# The module a PyTorch user writes for this layer list, by hand.
import torch
from torch import nn
sys.dont_write_bytecode = True
sys.path.insert(0, examples)
import load_model
model = nn.Sequential(
    nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Dropout(0.25), nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(),
    nn.Linear(32, 10))
tensors, metadata = load_model.read_safetensors(model_path)
model.load_state_dict(tensors)  # strict: the very same keys and shapes
model.eval()
assert metadata["input_shape"] == "1,28,28", metadata["input_shape"]
x, y = load_model.load_test_split(data_dir, metadata)
assert tuple(x.shape) == (1000, 1, 28, 28), x.shape
with torch.no_grad():
    hand = float((model(x).argmax(1) == y).float().mean())
assert round(hand, 4) == round(pnn_accuracy, 4), (hand, pnn_accuracy)
print(f"e2e model (cnn): pnn {pnn_accuracy:.4f}, load_model.py "
      f"{loaded['accuracy']:.4f}, hand-written nn.Sequential {hand:.4f}")
PY
  fail "cnn model assertions"
echo "e2e model test passed"
