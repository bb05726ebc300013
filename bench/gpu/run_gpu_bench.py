#!/usr/bin/env python3
"""pnn's GPU benchmark: conventional vs partitioned training on one GPU.

For each network (the default 784-256x5-10 cut after layer 3, and a wide
784-3072x6-10 cut after layer 3) it starts fresh local clusters of the
real binaries on loopback (a coordinator with --device=cpu, which joins
and tests, and CUDA workers) and runs:

  conventional  one job with parallelism PARALLELISM_CONVENTIONAL on one
                worker (--device=cuda)
  partitioned   one job with parallelism PARALLELISM_PARTITIONED, two
                segments on two worker processes sharing the one GPU
  torch loop    bench/gpu/torch_loop.py: the same layers in plain PyTorch
                (ReLU, Adam 1e-3, batch 128, same epochs, data resident on
                the device)

and measures the matrix-multiply peak (torch.mm, fp32 with TF32 off, and
bf16) in the same run. It writes, per run and segment, samples/s, the
CUDA caching allocator's peak (TrainingCost.device_peak_allocated_bytes),
model FLOP utilisation against both peaks and the test accuracy, with the
issue's "Done when" checks as computed booleans, to --out_json
(bench/gpu/results.json) and the GPU section of --markdown
(BENCHMARKS.md, between <!-- gpu:begin --> and <!-- gpu:end -->; the
section alone also goes to --section_md).

  bench/gpu/run_gpu_bench.py --build_dir build-gpu --data_dir gpu-deps/data
  bench/gpu/run_gpu_bench.py --device cpu --train_limit 2000 --test_limit 1000 \\
      --wide_widths 512x3 --out_json /tmp/r.json --markdown /tmp/B.md   # plumbing
  bench/gpu/run_gpu_bench.py --report_only     # the section from results.json

scripts/gpu-check runs it; every process started here is stopped by pid
on exit.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import run_bench  # noqa: E402  (bench/run_bench.py: processes, pnnctl, jobs)
from run_bench import BenchError, Processes  # noqa: E402

BEGIN = "<!-- gpu:begin -->"
END = "<!-- gpu:end -->"
DEFAULT_SPEC = os.path.join(REPO, "examples", "fashion_mnist.json")
PRECISIONS = {"fp32": "PRECISION_FP32", "bf16": "PRECISION_BF16",
              "tf32": "PRECISION_TF32"}


def log(message):
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"gpu-bench [{stamp}] {message}", file=sys.stderr, flush=True)


def inum(value):
    """An int64 of protobuf JSON (a string) or a number; 0 when absent."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def fnum(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_widths(text):
    """'4096x6' or '4096,4096,...' -> [4096, ...]."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match:
        return [int(match.group(1))] * int(match.group(2))
    return [int(w) for w in text.split(",") if w]


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------

def job_spec(args, network, parallelism):
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    spec["name"] = f"gpu-bench-{network['name']}-{parallelism.split('_')[-1].lower()}"
    spec["parallelism"] = parallelism
    spec["evaluations_per_epoch"] = 0
    # No per-epoch weights + Adam state to the coordinator (about 1 GiB an
    # epoch for the wide network): this measures training, not checkpoints.
    spec["resume_checkpoints"] = False
    spec["device"] = args.device
    model = spec.setdefault("model", {})
    model.pop("layers", None)
    model["hidden_widths"] = network["hidden"]
    model["cut_after_layers"] = network["cut_after"]
    spec.pop("auto_cut", None)
    spec.pop("segment_training", None)
    training = spec.setdefault("training", {})
    training["epochs"] = args.epochs
    training["batch_size"] = args.batch_size
    training["learning_rate"] = 0.001
    training["optimizer"] = "OPTIMIZER_ADAM"
    if args.precision != "fp32":
        training["precision"] = PRECISIONS[args.precision]
    spec.setdefault("recovery", {})["epochs"] = 0
    dataset = spec.setdefault("dataset", {})
    dataset["path"] = "fashion-mnist"
    if args.train_limit:
        dataset["train_limit"] = args.train_limit
    if args.test_limit:
        dataset["test_limit"] = args.test_limit
    return spec


def run_cluster(args, binaries, network, parallelism, workers, log_root):
    """One job on a fresh cluster; returns (job JSON, run info)."""
    mode = parallelism.split("_")[-1].lower()
    log_dir = os.path.join(log_root, f"{network['name']}-{mode}")
    os.makedirs(log_dir, exist_ok=True)
    spec_path = os.path.join(log_dir, "job.json")
    run_bench.write_json(spec_path, job_spec(args, network, parallelism))
    nproc = len(os.sched_getaffinity(0))
    threads = max(1, nproc // workers) if args.device == "cpu" else max(1, min(4, nproc // workers))
    log(f"{network['name']} {mode}: {workers} worker(s), device {args.device}, "
        f"{threads} thread(s) each; logs in {log_dir}")
    preload = [] if (args.train_limit or args.test_limit) else ["--preload=fashion-mnist"]
    with Processes(log_dir) as procs:
        _, address, started = run_bench.start_local_cluster(
            procs, binaries, log_dir, args.data_dir, nproc, workers, threads,
            f"gpu-bench-{network['name']}-{mode}", [f"--device={args.device}", *preload])
        submitted = time.monotonic()
        out = run_bench.pnnctl(binaries, address, "submit", spec_path)
        if out.returncode != 0:
            raise BenchError(f"pnnctl submit ({network['name']} {mode}): {out.stderr.strip()}")
        job_id = out.stdout.strip().splitlines()[-1].strip()
        job = run_bench.wait_for_job(binaries, address, job_id, args.job_timeout,
                                     os.path.join(log_dir, "watch.jsonl"))
        seconds = time.monotonic() - submitted
        worker_rss = {worker["name"]: run_bench.read_status_bytes(worker["pid"], "VmHWM")
                      for worker in started}
    run_bench.write_json(os.path.join(log_dir, "job_result.json"), job)
    log(f"{network['name']} {mode}: {job.get('state')} in {seconds:.1f} s "
        f"{job.get('message', '')}".rstrip())
    return job, {"workers": workers, "threads_per_worker": threads,
                 "submit_to_final_seconds": seconds, "worker_peak_rss_bytes": worker_rss}


def run_python(args, argv, what, log_root):
    """bench/gpu/torch_loop.py ARGV in a process of its own; its JSON line."""
    command = [sys.executable, os.path.join(HERE, "torch_loop.py")] + argv
    log_path = os.path.join(log_root, f"{what}.log")
    with open(log_path, "wb") as log_file:
        log_file.write(("$ " + shlex.join(command) + "\n").encode())
        log_file.flush()
        out = subprocess.run(command, stdout=subprocess.PIPE, stderr=log_file,
                             timeout=args.job_timeout, check=False,
                             env=run_bench.child_env(len(os.sched_getaffinity(0))))
    if out.returncode != 0:
        raise BenchError(f"{what} failed ({out.returncode}); see {log_path}: "
                         f"{run_bench.tail(log_path, 5)}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def mfu(flops_per_second, peak_tflops):
    if not flops_per_second or not peak_tflops:
        return None
    return flops_per_second / (peak_tflops * 1e12)


def summarize_job(job, run_info, peak):
    """The figures of one pnn job (conventional or partitioned)."""
    segments = []
    total_flops = 0.0
    longest = 0.0
    for task in job.get("segments") or []:
        cost = task.get("cost") or {}
        flops_per_sample = inum(cost.get("training_flops_per_sample"))
        sps = fnum(cost.get("samples_per_second")) or 0.0
        wall = fnum(cost.get("wall_seconds")) or 0.0
        achieved = flops_per_sample * sps
        total_flops += achieved * wall
        longest = max(longest, wall)
        segments.append({
            "layers": f"{task.get('first_layer')}..{task.get('last_layer')}",
            "worker_id": task.get("worker_id"),
            "wall_seconds": wall,
            "samples_per_second": sps,
            "training_flops_per_sample": flops_per_sample,
            "achieved_tflops": achieved / 1e12,
            "mfu_fp32": mfu(achieved, peak.get("fp32_tflops")),
            "mfu_bf16": mfu(achieved, peak.get("bf16_tflops")),
            "device_peak_allocated_bytes": inum(cost.get("device_peak_allocated_bytes")),
            "device_peak_reserved_bytes": inum(cost.get("device_peak_reserved_bytes")),
            "analytic_training_bytes": sum(inum(cost.get(k)) for k in (
                "parameter_bytes", "gradient_bytes", "optimizer_state_bytes",
                "activation_bytes")),
            "peak_rss_growth_bytes": inum(cost.get("peak_rss_growth_bytes")),
        })
    test = job.get("test") or {}
    joined = fnum(job.get("joined_test_accuracy"))
    accuracy = joined if joined else fnum(test.get("accuracy"))
    achieved = total_flops / longest if longest else None
    return {
        "state": job.get("state"), "message": job.get("message", ""),
        "test_accuracy": accuracy,
        "training_seconds": fnum(job.get("training_seconds")),
        "segments": segments,
        "largest_device_peak_allocated_bytes": max(
            [s["device_peak_allocated_bytes"] for s in segments] or [0]),
        "achieved_tflops": achieved / 1e12 if achieved else None,
        "mfu_fp32": mfu(achieved, peak.get("fp32_tflops")),
        "mfu_bf16": mfu(achieved, peak.get("bf16_tflops")),
        "run": run_info,
    }


def summarize_loop(loop, peak):
    achieved = loop["training_flops_per_sample"] * loop["samples_per_second"]
    return dict(loop, achieved_tflops=achieved / 1e12,
                mfu_fp32=mfu(achieved, peak.get("fp32_tflops")),
                mfu_bf16=mfu(achieved, peak.get("bf16_tflops")))


def done_when(results):
    """The issue's checks, computed from the results."""
    checks = []
    for name, net in results["networks"].items():
        conv = net.get("conventional") or {}
        part = net.get("partitioned") or {}
        loop = net.get("torch_loop") or {}
        if conv.get("test_accuracy") is not None and part.get("test_accuracy") is not None:
            diff = part["test_accuracy"] - conv["test_accuracy"]
            checks.append({
                "network": name,
                "check": "partitioned (joined) test accuracy within 1 pp of "
                         "conventional (|difference| <= 1 pp)",
                "measured": f"{100 * part['test_accuracy']:.2f}% vs "
                            f"{100 * conv['test_accuracy']:.2f}% ({100 * diff:+.2f} pp)",
                "value": diff, "passed": abs(diff) <= 0.01})
        conv_sps = (conv.get("segments") or [{}])[0].get("samples_per_second")
        if conv_sps and loop.get("samples_per_second"):
            ratio = conv_sps / loop["samples_per_second"]
            checks.append({
                "network": name,
                "check": "pnn conventional samples/s >= 0.9 x the plain PyTorch loop",
                "measured": f"{conv_sps:,.0f} vs {loop['samples_per_second']:,.0f} "
                            f"samples/s ({ratio:.2f}x)",
                "value": ratio, "passed": ratio >= 0.9})
        if name == "wide":
            conv_peak = conv.get("largest_device_peak_allocated_bytes") or 0
            part_peak = part.get("largest_device_peak_allocated_bytes") or 0
            if conv_peak and part_peak:
                ratio = part_peak / conv_peak
                checks.append({
                    "network": name,
                    "check": "largest segment's allocator peak <= 0.6 x conventional's",
                    "measured": f"{mib(part_peak)} vs {mib(conv_peak)} ({ratio:.2f}x)",
                    "value": ratio, "passed": ratio <= 0.6})
            else:
                checks.append({
                    "network": name,
                    "check": "largest segment's allocator peak <= 0.6 x conventional's",
                    "measured": ("a run failed" if conv.get("error") or part.get("error")
                                 else "no allocator peak reported "
                                 "(device_peak_allocated_bytes is 0 off CUDA)"),
                    "value": None, "passed": None})
    return checks


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def mib(value):
    return f"{value / 1048576:,.1f} MiB" if value else "-"


def pct(value, digits=2):
    return f"{100 * value:.{digits}f}%" if value is not None else "-"


def num(value, fmt="{:,.0f}"):
    return fmt.format(value) if value is not None else "-"


def render_section(results):
    """The GPU section of BENCHMARKS.md (markers included)."""
    lines = [BEGIN, "## GPU", ""]
    if not results:
        lines += ["No GPU figures exist yet.", ""]
        lines += how_to_lines()
        lines.append(END)
        return "\n".join(lines) + "\n"
    machine = results.get("machine") or {}
    peak = results.get("matmul_peak") or {}
    lines += [
        f"Produced by `{results.get('command', 'bench/gpu/run_gpu_bench.py')}` on "
        f"{results.get('date', '?')}: {machine.get('device_name', '?')}, torch "
        f"{machine.get('torch', '?')} (CUDA {machine.get('cuda_version') or '-'}), "
        f"{machine.get('nproc', '?')} CPU cores. Device `{results.get('device')}`, "
        f"precision {results.get('precision')}, {results.get('epochs')} epoch(s), batch "
        f"{results.get('batch_size')}, Adam 1e-3, Fashion-MNIST "
        f"({results.get('train_samples_note', 'all samples')}).",
        "",
        f"Matrix-multiply peak measured in the same run (torch.mm {peak.get('size')}², "
        f"device synchronised): fp32 (TF32 off) {num(peak.get('fp32_tflops'), '{:.1f}')} "
        f"TFLOP/s, bf16 {num(peak.get('bf16_tflops'), '{:.1f}')} TFLOP/s. MFU = the "
        "run's training FLOPs per sample (TrainingCost.training_flops_per_sample, "
        "3 x forward) x samples/s over that peak; a partitioned job's is all "
        "segments' FLOPs over its longest segment's time.",
        "",
        "| network | run | segment | test accuracy | samples/s | allocator peak "
        "(allocated / reserved) | MFU fp32 | MFU bf16 | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, net in results.get("networks", {}).items():
        label = f"{name} ({net.get('shape')}, cut after {net.get('cut_after')})"
        for run in ("conventional", "partitioned"):
            summary = net.get(run) or {}
            if summary.get("error"):
                lines.append(f"| {label} | {run} | | error: {summary['error']} | | | | | |")
                continue
            for index, seg in enumerate(summary.get("segments") or []):
                accuracy = pct(summary.get("test_accuracy")) if index == 0 else ""
                lines.append(
                    f"| {label} | {run} | layers {seg['layers']} | {accuracy} | "
                    f"{num(seg['samples_per_second'])} | "
                    f"{mib(seg['device_peak_allocated_bytes'])} / "
                    f"{mib(seg['device_peak_reserved_bytes'])} | "
                    f"{pct(seg['mfu_fp32'])} | {pct(seg['mfu_bf16'])} | "
                    f"{num(seg['wall_seconds'], '{:.1f}')} |")
        loop = net.get("torch_loop") or {}
        if loop.get("error"):
            lines.append(f"| {label} | PyTorch loop | | error: {loop['error']} | | | | | |")
        elif loop:
            lines.append(
                f"| {label} | PyTorch loop | whole | {pct(loop.get('test_accuracy'))} | "
                f"{num(loop.get('samples_per_second'))} | "
                f"{mib(loop.get('device_peak_allocated_bytes'))} / "
                f"{mib(loop.get('device_peak_reserved_bytes'))} | "
                f"{pct(loop.get('mfu_fp32'))} | {pct(loop.get('mfu_bf16'))} | "
                f"{num(loop.get('wall_seconds'), '{:.1f}')} |")
    lines += ["", "Done-when checks of the GPU issue, computed:", "",
              "| network | check | measured | passed |", "|---|---|---|---|"]
    for check in results.get("done_when") or []:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[check.get("passed")]
        lines.append(f"| {check['network']} | {check['check']} | {check['measured']} | "
                     f"{verdict} |")
    lines += ["", "The two partitioned workers share the one GPU (two processes, "
              "each with its own CUDA context and caching allocator); each segment's "
              "allocator peak is its own process's. Samples/s of pnn's runs are the "
              "workers' own (TrainingCost.samples_per_second, training epochs only); "
              "the PyTorch loop's count its timed epochs, with the data set resident "
              "on the device and a warm-up before the clock.", ""]
    lines += how_to_lines()
    lines.append(END)
    return "\n".join(lines) + "\n"


def how_to_lines():
    return [
        "How to produce it: on a machine with an NVIDIA GPU and PyTorch, run "
        "`scripts/gpu-deps` first on a Debian 12 machine (it gathers the build "
        "dependencies PyTorch lacks and Fashion-MNIST into `gpu-deps/`), carry "
        "`gpu-deps/prefix.tar.xz` and `gpu-deps/data` with the working tree, and "
        "run `scripts/gpu-check` there: it builds pnn against PyTorch's libtorch, "
        "runs `ctest -L cuda` and the trainer tests, then "
        "`bench/gpu/run_gpu_bench.py`, which writes `bench/gpu/results.json` and "
        "this section (`bench/gpu/run_gpu_bench.py --report_only` rewrites it "
        "from the JSON; `scripts/bench` keeps this section when it rewrites the "
        "rest). `scripts/gpu-check --cpu-smoke` checks the "
        "plumbing on a CPU-only machine without touching either file.",
        "",
    ]


def splice(markdown_path, section):
    """Replaces the GPU section of the file (or appends it)."""
    text = ""
    if os.path.exists(markdown_path):
        with open(markdown_path, encoding="utf-8") as f:
            text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = markdown_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, markdown_path)


def write_report(results, args):
    section = render_section(results)
    if args.section_md:
        with open(args.section_md, "w", encoding="utf-8") as f:
            f.write(section)
    if args.markdown:
        splice(args.markdown, section)
        log(f"wrote the GPU section of {args.markdown}")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def machine_info(args, peak):
    info = {"nproc": len(os.sched_getaffinity(0)), "torch": peak.get("torch"),
            "device_name": peak.get("device_name"), "cuda_version": None}
    try:
        out = subprocess.run([sys.executable, "-c",
                              "import torch; print(torch.version.cuda or '')"],
                             capture_output=True, text=True, timeout=120, check=False)
        info["cuda_version"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=False)
        info["nvidia_smi"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def run(args, argv):
    binaries = run_bench.Binaries(args.build_dir)
    binaries.check(["coordinator", "worker", "pnnctl"])
    log_root = args.log_dir or os.path.join("/tmp", f"pnn-gpu-bench-{os.getpid()}")
    os.makedirs(log_root, exist_ok=True)
    data_dir = os.path.join(args.data_dir, "fashion-mnist")

    log(f"matmul peak on {args.device}")
    peak = run_python(args, ["peak", f"--device={args.device}", f"--size={args.matmul_size}",
                             f"--seconds={args.matmul_seconds}"], "matmul_peak", log_root)
    log(f"  fp32 {peak.get('fp32_tflops', 0):.2f} TFLOP/s, "
        f"bf16 {peak.get('bf16_tflops') or 0:.2f} TFLOP/s")
    networks = [{"name": "default", "hidden": [256] * 5, "cut_after": [3]},
                {"name": "wide", "hidden": parse_widths(args.wide_widths),
                 "cut_after": [args.wide_cut]}]
    wanted = [n.strip() for n in args.networks.split(",") if n.strip()]
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["bench/gpu/run_gpu_bench.py"] + [shlex.quote(a) for a in argv]),
        "machine": machine_info(args, peak),
        "device": args.device, "precision": args.precision, "epochs": args.epochs,
        "batch_size": args.batch_size, "train_limit": args.train_limit,
        "test_limit": args.test_limit,
        "train_samples_note": (f"first {args.train_limit} training / {args.test_limit or 'all'} "
                               "test samples") if args.train_limit else "all samples",
        "matmul_peak": peak,
        "networks": {},
    }
    failures = 0
    for network in networks:
        if network["name"] not in wanted:
            continue
        widths = [784] + network["hidden"] + [10]
        net = {"widths": widths, "shape": "784-" + "-".join(map(str, network["hidden"])) + "-10",
               "cut_after": network["cut_after"]}
        if len(set(network["hidden"])) == 1:
            net["shape"] = f"784-{network['hidden'][0]}x{len(network['hidden'])}-10"
        for mode, parallelism, workers in (
                ("conventional", "PARALLELISM_CONVENTIONAL", 1),
                ("partitioned", "PARALLELISM_PARTITIONED", 2)):
            try:
                job, info = run_cluster(args, binaries, network, parallelism, workers, log_root)
                net[mode] = summarize_job(job, info, peak)
                if job.get("state") != "JOB_STATE_SUCCEEDED":
                    failures += 1
            except (BenchError, subprocess.SubprocessError, json.JSONDecodeError) as error:
                log(f"{network['name']} {mode} failed: {error}")
                net[mode] = {"error": str(error).splitlines()[0]}
                failures += 1
        log(f"{network['name']}: plain PyTorch loop")
        try:
            loop = run_python(args, [
                "train", f"--widths={','.join(map(str, widths))}", f"--epochs={args.epochs}",
                f"--batch_size={args.batch_size}", f"--data_dir={data_dir}",
                f"--train_limit={args.train_limit}", f"--test_limit={args.test_limit}",
                f"--device={args.device}", f"--precision={args.precision}"],
                f"torch_loop_{network['name']}", log_root)
            net["torch_loop"] = summarize_loop(loop, peak)
            log(f"  {loop['samples_per_second']:,.0f} samples/s, "
                f"test accuracy {100 * loop['test_accuracy']:.2f}%")
        except (BenchError, subprocess.SubprocessError, json.JSONDecodeError, KeyError) as error:
            log(f"{network['name']} PyTorch loop failed: {error}")
            net["torch_loop"] = {"error": str(error).splitlines()[0]}
            failures += 1
        results["networks"][network["name"]] = net
    results["done_when"] = done_when(results)
    run_bench.write_json(args.out_json, results)
    log(f"wrote {args.out_json}")
    write_report(results, args)
    for check in results["done_when"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[check["passed"]]
        log(f"  {verdict:4} {check['network']}: {check['check']}: {check['measured']}")
    log(f"logs in {log_root}")
    return 1 if failures else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--build_dir", default="build-gpu")
    parser.add_argument("--data_dir", default=os.environ.get("PNN_DATA_ROOT",
                                                             "/usr/share/datasets"),
                        help="data root holding fashion-mnist/ (default "
                             "$PNN_DATA_ROOT or /usr/share/datasets)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--train_limit", type=int, default=0)
    parser.add_argument("--test_limit", type=int, default=0)
    parser.add_argument("--networks", default="default,wide")
    # 3072x6: 49.6 M parameters, 198 MB of float32 weights. 4096x6 (87 M,
    # 349 MB) is over the 256 MiB a gRPC message may carry (rpc/rpc_util.h,
    # kMaxMessageBytes), so its conventional job could not return its
    # weights in one SegmentResult.
    parser.add_argument("--wide_widths", default="3072x6",
                        help="hidden widths of the wide network: WIDTHxCOUNT or a list "
                             "(default 3072x6; the whole network's weights must fit "
                             "one 256 MiB message)")
    parser.add_argument("--wide_cut", type=int, default=3,
                        help="the wide network's cut (after this linear layer); 3 "
                             "balances 784-3072x6-10's training memory best")
    parser.add_argument("--spec", default=DEFAULT_SPEC,
                        help="base job spec (SIL, seed); the network, epochs and "
                             "device are set here")
    parser.add_argument("--matmul_size", type=int, default=8192)
    parser.add_argument("--matmul_seconds", type=float, default=2.0)
    parser.add_argument("--job_timeout", type=int, default=300)
    parser.add_argument("--log_dir", default="")
    parser.add_argument("--out_json", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--markdown", default=os.path.join(REPO, "BENCHMARKS.md"),
                        help="the file whose GPU section is rewritten ('' for none)")
    parser.add_argument("--section_md", default=os.path.join(HERE, "section.md"),
                        help="where the GPU section alone is written ('' for none)")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: rewrite the section from --out_json")
    args = parser.parse_args(argv)
    args.data_dir = os.path.abspath(args.data_dir)
    args.spec = os.path.abspath(args.spec)
    return args


def main(argv):
    args = parse_args(argv)

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    try:
        if args.report_only:
            results = None
            if os.path.exists(args.out_json):
                with open(args.out_json, encoding="utf-8") as f:
                    results = json.load(f)
            write_report(results, args)
            return 0
        if args.device.startswith("cpu"):
            # GPU figures only in the repository's files.
            for given, own in ((args.out_json, os.path.join(HERE, "results.json")),
                               (args.markdown, os.path.join(REPO, "BENCHMARKS.md")),
                               (args.section_md, os.path.join(HERE, "section.md"))):
                if given and os.path.abspath(given) == own:
                    raise BenchError(f"a CPU run must not write {os.path.relpath(own, REPO)} "
                                     "(GPU figures only): pass --out_json, --markdown "
                                     "and --section_md elsewhere (or '')")
        return run(args, argv)
    except BenchError as error:
        log(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; every started process was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
