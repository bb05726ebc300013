#!/usr/bin/env python3
"""Plain PyTorch references for bench/gpu/run_gpu_bench.py.

  torch_loop.py train --widths 784,256,256,256,256,256,10 --epochs 2 \\
      --data_dir /usr/share/datasets/fashion-mnist --device cuda
  torch_loop.py peak --device cuda [--size 8192] [--seconds 2]

`train`: the loop a PyTorch user writes for pnn's fully connected network:
nn.Sequential of Linear layers with ReLU between them, Adam (lr 1e-3),
cross-entropy, batch 128, a new random order each epoch, the whole
training set resident on the device as float32 in [0, 1] (pixel / 255, as
pnn scales it), so the loop measures training alone. It prints one JSON
line: samples/s over the training epochs (device synchronised before the
clock stops), the caching allocator's peak while training, and the test
accuracy.

`peak`: the matrix-multiply peak of the device, the MFU denominator: the
sustained FLOP/s of torch.mm on two random square matrices, float32 with
TF32 off and bfloat16 (on the CPU: float32 only), each timed for
--seconds after a warm-up, with the device synchronised. One JSON line.

--precision bf16 runs the forward pass under torch.autocast(bfloat16), as
pnn's PRECISION_BF16 does; tf32 allows TF32 matrix products (CUDA only).
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time


def read_idx(path):
    """An IDX file (gzip or raw) as (dims, bytes)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def find_file(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {data_dir}")


def load_split(torch, data_dir, split, limit, device):
    prefix = "train" if split == "train" else "t10k"
    dims, images = read_idx(find_file(data_dir, f"{prefix}-images-idx3-ubyte"))
    _, labels = read_idx(find_file(data_dir, f"{prefix}-labels-idx1-ubyte"))
    count = dims[0]
    width = 1
    for d in dims[1:]:
        width *= d
    x = torch.frombuffer(bytearray(images), dtype=torch.uint8).view(count, width)
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8).to(torch.int64)
    if limit:
        x, y = x[:limit], y[:limit]
    x = x.to(device=device, dtype=torch.float32) / 255.0
    return x, y.to(device)


def synchronize(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cmd_train(args):
    import torch
    from torch import nn

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        allow = args.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
    elif args.precision == "tf32":
        raise SystemExit("torch_loop.py: tf32 needs CUDA")
    widths = [int(w) for w in args.widths.split(",")]
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    x_train, y_train = load_split(torch, args.data_dir, "train", args.train_limit, device)
    x_test, y_test = load_split(torch, args.data_dir, "test", args.test_limit, device)
    if x_train.shape[1] != widths[0]:
        raise SystemExit(f"torch_loop.py: input width {x_train.shape[1]} != {widths[0]}")
    n = x_train.shape[0]
    autocast = args.precision == "bf16"

    def step(xb, yb):
        optimizer.zero_grad(set_to_none=True)
        if autocast:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
        else:
            loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss

    # Warm-up outside the clock (kernels, cuBLAS handles); the model is
    # re-initialised afterwards so the timed run starts fresh.
    if args.warmup_steps:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for i in range(args.warmup_steps):
            step(x_train[:args.batch_size], y_train[:args.batch_size])
        synchronize(torch, device)
        model.load_state_dict(state)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    epochs = []
    loss = None
    start = time.perf_counter()
    for epoch in range(args.epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(n, device=device)
        for first in range(0, n, args.batch_size):
            index = order[first:first + args.batch_size]
            loss = step(x_train[index], y_train[index])
        synchronize(torch, device)
        seconds = time.perf_counter() - epoch_start
        epochs.append({"epoch": epoch + 1, "seconds": seconds,
                       "samples_per_second": n / seconds,
                       "last_loss": float(loss.item()) if loss is not None else None})
    wall = time.perf_counter() - start
    peak_allocated = peak_reserved = 0
    if device.type == "cuda":
        peak_allocated = torch.cuda.max_memory_allocated(device)
        peak_reserved = torch.cuda.max_memory_reserved(device)
    model.eval()
    correct = 0
    with torch.no_grad():
        for first in range(0, x_test.shape[0], 1000):
            xb = x_test[first:first + 1000]
            if autocast:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    logits = model(xb)
            else:
                logits = model(xb)
            correct += int((logits.argmax(1) == y_test[first:first + 1000]).sum())
    forward = sum(2 * widths[i] * widths[i + 1] for i in range(len(widths) - 1))
    result = {
        "torch": torch.__version__, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "widths": widths, "precision": args.precision, "epochs": args.epochs,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "train_samples": n, "test_samples": int(x_test.shape[0]),
        "wall_seconds": wall, "samples_per_second": n * args.epochs / wall,
        "epoch_stats": epochs,
        "training_flops_per_sample": 3 * forward,
        "device_peak_allocated_bytes": peak_allocated,
        "device_peak_reserved_bytes": peak_reserved,
        "test_accuracy": correct / x_test.shape[0],
    }
    print(json.dumps(result))


def cmd_peak(args):
    import torch

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [("fp32", torch.float32)]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        dtypes.append(("bf16", torch.bfloat16))
    result = {"torch": torch.__version__, "device": str(device), "size": args.size,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "tf32": False}
    n = args.size
    for name, dtype in dtypes:
        gen = torch.Generator(device=device).manual_seed(1)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        c = torch.empty(n, n, device=device, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b, out=c)
        synchronize(torch, device)
        products = 0
        start = time.perf_counter()
        while True:
            for _ in range(10 if device.type == "cuda" else 1):
                torch.mm(a, b, out=c)
                products += 1
            synchronize(torch, device)
            elapsed = time.perf_counter() - start
            if elapsed >= args.seconds:
                break
        result[f"{name}_tflops"] = 2.0 * n ** 3 * products / elapsed / 1e12
        del a, b, c
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(result))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="the plain PyTorch training loop")
    train.add_argument("--widths", default="784,256,256,256,256,256,10")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch_size", type=int, default=128)
    train.add_argument("--learning_rate", type=float, default=1e-3)
    train.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    train.add_argument("--train_limit", type=int, default=0)
    train.add_argument("--test_limit", type=int, default=0)
    train.add_argument("--device", default="cuda")
    train.add_argument("--precision", choices=("fp32", "bf16", "tf32"), default="fp32")
    train.add_argument("--threads", type=int, default=0)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--warmup_steps", type=int, default=20)
    peak = sub.add_parser("peak", help="the matrix-multiply peak")
    peak.add_argument("--device", default="cuda")
    peak.add_argument("--size", type=int, default=8192)
    peak.add_argument("--seconds", type=float, default=2.0)
    peak.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        cmd_train(args)
    else:
        cmd_peak(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
