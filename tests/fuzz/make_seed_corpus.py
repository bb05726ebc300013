#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (tests/fuzz/corpus/) from scratch.

    tests/fuzz/make_seed_corpus.py            # rewrite tests/fuzz/corpus/
    tests/fuzz/make_seed_corpus.py OUT_DIR    # write OUT_DIR/{idx,job_spec}/

idx/: tiny IDX files (raw and gzip, valid and near-misses), each < 2 KB.
job_spec/: examples/*.json, JSON edge cases, and binary pnn.v1.JobSpec
seeds in the fuzzer's binary-mode layout (00 WW CC + serialized message),
encoded with `protoc --encode` (skipped with a note when protoc is absent).
Output is deterministic (gzip mtime 0), so rerunning changes nothing.
"""

import gzip
import pathlib
import shutil
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def idx(dims, data=None, type_byte=0x08):
    total = 1
    for d in dims:
        total *= d
    if data is None:
        data = bytes((i * 37 + 11) % 256 for i in range(total))
    header = bytes([0, 0, type_byte, len(dims)])
    header += b"".join(struct.pack(">I", d) for d in dims)
    return header + data


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


IDX_SEEDS = {
    # valid
    "labels-4.idx1": idx([4], bytes([1, 2, 3, 9])),
    "labels-10.idx1": idx([10], bytes(range(10))),
    "images-3x2x2.idx3": idx([3, 2, 2]),
    "image-1x28x28.idx3": idx([1, 28, 28]),
    "rank4-2x2x2x3.idx4": idx([2, 2, 2, 3]),
    "images-2x3x3.idx3.gz": gz(idx([2, 3, 3])),
    "labels-5.idx1.gz": gz(idx([5], bytes([0, 1, 0, 1, 2]))),
    # near-misses, one rule each
    "truncated-payload.idx3": idx([2, 2, 2])[:-3],
    "trailing-data.idx1": idx([2], b"\x01\x02") + b"\xff",
    "type-float.idx1": idx([2], b"\x00\x00", type_byte=0x0D),
    "rank0.idx": bytes([0, 0, 8, 0]),
    "rank5.idx": idx([1, 1, 1, 1, 1]),
    "zero-dim.idx2": bytes([0, 0, 8, 2]) + struct.pack(">II", 0, 4),
    "huge-dims.idx3": bytes([0, 0, 8, 3]) + struct.pack(">III", 65536, 65536, 2),
    "negative-dim.idx1": bytes([0, 0, 8, 1]) + struct.pack(">I", 0x80000000),
    "short-header.idx2": bytes([0, 0, 8, 2, 0, 0, 0]),
    "truncated.gz": gz(idx([2, 3, 3]))[:-6],
    "gzip-then-garbage.gz": gz(idx([2], b"\x07\x08")) + b"garbage",
}

JSON_SEEDS = {
    "empty.json": "{}",
    "orthogonal.json":
        '{"model": {"hidden_widths": [16, 4], "cut_after_layers": [2]},'
        ' "sil": {"distribution": "SIL_DISTRIBUTION_ORTHOGONAL"}}',
    "many-cuts.json":
        '{"model": {"hidden_widths": [8, 8, 8, 8, 8, 8],'
        ' "cut_after_layers": [1, 2, 3, 4, 5, 6],'
        ' "activation": "ACTIVATION_GELU"},'
        ' "segment_training": [{"epochs": 1}, {}, {"optimizer": 2,'
        ' "momentum": 0.5}, {}, {}, {}, {"batch_size": 65536}]}',
    "sgd-previous-outputs.json":
        '{"training": {"optimizer": "OPTIMIZER_SGD", "momentum": 0.99,'
        ' "weight_decay": 1, "learning_rate": 10},'
        ' "sil": {"input_mode": "INPUT_MODE_PREVIOUS_OUTPUTS",'
        ' "distribution": 2, "kappa": 10000, "input_noise_std": 0},'
        ' "device": "cuda:0", "seed": "18446744073709551615",'
        ' "dataset": {"orientation": "IMAGE_ORIENTATION_TRANSPOSED",'
        ' "test_limit": 2147483647}}',
    "non-finite.json":
        '{"sil": {"kappa": "NaN", "input_noise_std": "Infinity"},'
        ' "training": {"learning_rate": "-Infinity"}}',
    "limits.json":
        '{"model": {"hidden_widths": [65536, 65536], "cut_after_layers": [1]},'
        ' "training": {"epochs": 10000}, "recovery": {"epochs": 0}}',
    "unknown-enum.json":
        '{"model": {"activation": 99}, "sil": {"distribution": -1}}',
    "unknown-field.json": '{"modle": {}}',
    "cnn-every-layer.json":
        '{"model": {"layers": [{"conv2d": {"out_channels": 4, "kernel": 3,'
        ' "padding": 1}}, {"max_pool": {"kernel": 2}}, {"conv2d":'
        ' {"out_channels": 6, "kernel": 3, "stride": 2}}, {"avg_pool":'
        ' {"kernel": 2, "stride": 1}}, {"dropout": {"p": 0.5}}, {"flatten":'
        ' {}}, {"linear": {"out_features": 16}}, {"linear": {}}],'
        ' "cut_after_layers": [1, 4, 7]},'
        ' "sil": {"distribution": "SIL_DISTRIBUTION_ORTHOGONAL"}}',
    "cnn-near-misses.json":
        '{"model": {"layers": [{"linear": {"out_features": 8}},'
        ' {"conv2d": {"out_channels": 2, "kernel": 99}}, {"flatten": {}},'
        ' {}, {"max_pool": {"kernel": 3, "padding": 2}}],'
        ' "hidden_widths": [4], "cut_after_layers": [9]}}',
    "cnn-auto-cut.json":
        '{"model": {"layers": [{"conv2d": {"out_channels": 8, "kernel": 5}},'
        ' {"max_pool": {"kernel": 2}}, {"flatten": {}}, {"linear":'
        ' {"out_features": 10}}]}, "auto_cut": {"segments": 3,'
        ' "objective": "BALANCE_OBJECTIVE_TRAINING_MEMORY"},'
        ' "parallelism": "PARALLELISM_MODEL_PARALLEL"}',
    "escapes.json":
        '{"name": "caf\\u00e9 \\ud83d\\ude00 \\u0000", "device": "cuda:007",'
        ' "dataset": {"path": "a/b", "emnist_split": "balanced"}}',
    "lower-camel.json":
        '{"model": {"hiddenWidths": [4], "cutAfterLayers": [1]},'
        ' "segmentTraining": [], "seed": 0}',
    "not-json.json": '{"model": [}',
}

# Binary seeds: text format of pnn.v1.JobSpec, and the fuzzer's shape
# bytes (input width - 1, classes - 1).
BINARY_SEEDS = {
    "binary-default.bin": ("", 783, 9),
    "binary-paper.bin": (
        "model { hidden_widths: [256, 256, 256, 256, 256]"
        " cut_after_layers: 3 } training { epochs: 5 batch_size: 128"
        " learning_rate: 0.001 } seed: 1", 783, 9),
    "binary-orthogonal.bin": (
        "model { hidden_widths: [16, 4] cut_after_layers: 2 }"
        " sil { distribution: SIL_DISTRIBUTION_ORTHOGONAL kappa: 2 }",
        783, 3),
    "binary-three-segments.bin": (
        "model { hidden_widths: [32, 16, 8] cut_after_layers: [1, 3] }"
        " segment_training { learning_rate: 0.0005 }"
        " segment_training { } segment_training { optimizer: OPTIMIZER_SGD"
        " momentum: 0.9 } recovery { epochs: 1 } device: \"cuda:1\"",
        4095, 46),
}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 2048, path
    path.write_bytes(data)


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else \
        ROOT / "tests" / "fuzz" / "corpus"
    for name, data in IDX_SEEDS.items():
        write(out / "idx" / name, data)
    for example in sorted((ROOT / "examples").glob("*.json")):
        write(out / "job_spec" / example.name, example.read_bytes())
    for name, text in JSON_SEEDS.items():
        write(out / "job_spec" / name, text)
    protoc = shutil.which("protoc")
    if protoc is None:
        print("make_seed_corpus: protoc not found; binary seeds skipped",
              file=sys.stderr)
        return
    for name, (text, width, classes) in BINARY_SEEDS.items():
        message = subprocess.run(
            [protoc, "--encode=pnn.v1.JobSpec", "-I", str(ROOT / "proto"),
             "pnn/v1/job.proto"],
            input=text.encode(), stdout=subprocess.PIPE, check=True).stdout
        write(out / "job_spec" / name,
              b"\x00" + struct.pack(">HH", width, classes) + message)


if __name__ == "__main__":
    main()
