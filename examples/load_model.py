#!/usr/bin/env python3
"""Loads a pnn model into a plain torch.nn.Sequential and tests it.

Downloaded with `pnnctl download JOB -o model.safetensors`, a pnn model is a
safetensors file whose keys are those of an nn.Sequential (for a fully
connected network Linear and activation modules, Linear at 0, 2, 4, ...;
for a layer list Conv2d, MaxPool2d, AvgPool2d, Flatten, Linear, Dropout and
the activation after every Conv2d and Linear but the last) and whose
__metadata__ says how to build and feed it (modules, input shape, input
scaling, data set). This
script needs only PyTorch (Debian: python3-torch); with the `safetensors`
package the two lines

    model = build_model(metadata)
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

do the same as read_safetensors() below.

The module a PyTorch user writes for a layer list is the same
nn.Sequential: for examples/fashion_mnist_cnn.json

    nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(),
                  nn.Linear(128, 10))

takes [batch, 1, 28, 28] and loads the file's state dict as it is.

It reads the IDX test split (gzip or raw; the data set's MNIST or EMNIST
file names) the job was tested on, scales the pixels exactly as pnn does
(float32(pixel) / 255, transposed first for EMNIST, shaped as the
metadata's input_shape: flattened for a fully connected network),
keeps the job's first test_limit rows, and prints the test accuracy.
`--onnx OUT` also exports the model as ONNX (needs python3-onnx only to
check the file).

Usage:
  load_model.py MODEL.safetensors [--data_dir DIR] [--onnx OUT.onnx]
                [--output text|json]
"""

import argparse
import gzip
import json
import os
import re
import struct
import sys

import torch

DEFAULT_DATA_ROOT = "/usr/share/datasets"

ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,  # exact (erf) GELU, as pnn's at::gelu
    "sigmoid": torch.nn.Sigmoid,
}


def read_safetensors(path):
    """Returns (tensors by name, metadata) of a float32 safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    metadata = header.pop("__metadata__", {})
    start = 8 + size
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {entry['dtype']}, not F32")
        begin, end = entry["data_offsets"]
        values = torch.frombuffer(bytearray(data[start + begin:start + end]),
                                  dtype=torch.float32)
        tensors[name] = values.reshape(entry["shape"])
    return tensors, metadata


def sequential_keys(tensors):
    """Files written before pnn_format_version 1 name the layers
    linear<L>.weight/.bias; nn.Sequential's key is 2 * (L - 1)."""
    renamed = {}
    for name, tensor in tensors.items():
        match = re.fullmatch(r"linear(\d+)\.(weight|bias)", name)
        renamed[f"{2 * (int(match.group(1)) - 1)}.{match.group(2)}"
                if match else name] = tensor
    return renamed


MODULES = {
    "Conv2d": torch.nn.Conv2d,
    "MaxPool2d": torch.nn.MaxPool2d,
    "AvgPool2d": torch.nn.AvgPool2d,
    "Flatten": torch.nn.Flatten,
    "Linear": torch.nn.Linear,
    "Dropout": torch.nn.Dropout,
    "ReLU": torch.nn.ReLU,
    "Tanh": torch.nn.Tanh,
    "GELU": torch.nn.GELU,
    "Sigmoid": torch.nn.Sigmoid,
}


def build_model(metadata):
    """The nn.Sequential that metadata['modules'] describes (or, in files
    without it, metadata['widths'] and ['activation'])."""
    if metadata.get("modules"):
        modules = []
        for entry in json.loads(metadata["modules"]):
            kind = entry.pop("type")
            if kind not in MODULES:
                raise ValueError(f"unknown module type {kind!r}")
            modules.append(MODULES[kind](**entry))
        return torch.nn.Sequential(*modules)
    widths = [int(w) for w in metadata["widths"].split(",")]
    # Before version 1 the activation was the enum name, "ACTIVATION_RELU".
    name = metadata["activation"].lower().replace("activation_", "")
    if name not in ACTIVATIONS and name != "unspecified":  # unspecified: ReLU
        raise ValueError(f"unknown activation {metadata['activation']!r}")
    activation = ACTIVATIONS.get(name, torch.nn.ReLU)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i + 2 < len(widths):
            layers.append(activation())
    return torch.nn.Sequential(*layers)


def read_idx(path):
    """An IDX file's unsigned bytes as a uint8 tensor of its dimensions."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    rank = data[3]
    dims = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
    body = bytearray(data[4 + 4 * rank:])
    return torch.frombuffer(body, dtype=torch.uint8).reshape(dims)


def find_file(directory, names):
    for name in names:
        for suffix in (".gz", ""):
            candidate = os.path.join(directory, name + suffix)
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(
        f"no {' or '.join(names)}[.gz] in {directory} (give --data_dir)")


def load_test_split(directory, metadata):
    """Test inputs scaled as pnn scales them, and labels (int64)."""
    split = metadata.get("dataset_emnist_split", "")
    if split:
        images = [f"emnist-{split}-test-images-idx3-ubyte",
                  f"emnist-{split}-test-images-idx4-ubyte"]
        labels = [f"emnist-{split}-test-labels-idx1-ubyte"]
    else:
        images = ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte",
                  "t10k-images-idx4-ubyte"]
        labels = ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"]
    pixels = read_idx(find_file(directory, images))
    targets = read_idx(find_file(directory, labels)).to(torch.int64)
    limit = int(metadata.get("test_limit", "0"))
    if limit > 0:  # pnn tests on the first test_limit rows
        pixels, targets = pixels[:limit], targets[:limit]
    if pixels.dim() == 3:  # [N, rows, cols]: one channel
        pixels = pixels.unsqueeze(1)
    if metadata.get("input_transpose") == "true":
        pixels = pixels.transpose(2, 3)
    shape = [int(d) for d in
             metadata.get("input_shape", metadata.get("input_width", "-1"))
             .split(",")]
    x = pixels.reshape(pixels.shape[0], *shape).to(torch.float32).div_(255.0)
    return x, targets


def accuracy(model, x, y, batch=2048):
    correct = 0
    with torch.no_grad():
        for begin in range(0, x.shape[0], batch):
            logits = model(x[begin:begin + batch])
            correct += int((logits.argmax(1) == y[begin:begin + batch]).sum())
    return correct / x.shape[0]


def data_directory(metadata, data_dir):
    if data_dir:
        return data_dir
    dataset = metadata.get("dataset") or "fashion-mnist"
    return dataset if os.path.isabs(dataset) else os.path.join(
        DEFAULT_DATA_ROOT, dataset)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a .safetensors file from pnnctl download")
    parser.add_argument("--data_dir", help="directory of the IDX files "
                        "(default: /usr/share/datasets/<metadata dataset>)")
    parser.add_argument("--onnx", metavar="OUT", help="also export as ONNX")
    parser.add_argument("--output", choices=["text", "json"], default="text")
    args = parser.parse_args()

    tensors, metadata = read_safetensors(args.model)
    model = build_model(metadata)
    model.load_state_dict(sequential_keys(tensors))  # strict: all keys
    model.eval()
    x, y = load_test_split(data_directory(metadata, args.data_dir), metadata)
    result = {"job_id": metadata.get("job_id", ""), "samples": x.shape[0],
              "accuracy": accuracy(model, x, y)}
    if args.onnx:
        torch.onnx.export(model, x[:1], args.onnx, input_names=["pixels"],
                          output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"},
                                        "logits": {0: "batch"}})
        result["onnx"] = args.onnx
    if args.output == "json":
        print(json.dumps(result))
    else:
        print(f"{result['job_id']}: test accuracy {result['accuracy']:.4f} "
              f"on {result['samples']} samples")
        if args.onnx:
            print(f"ONNX model written to {args.onnx}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
