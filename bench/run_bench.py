#!/usr/bin/env python3
"""pnn's benchmarks (issue 6): runs them and writes the report.

Main preset: with one job spec, for each mode (conventional on one worker
with every core; model-parallel with one micro-batch per batch and with
GPipe and 1F1B on --micro_batches, partitioned with the spec's cut, with
the cut pnn chooses (auto_cut: FLOPs, and the layers' times measured on a
worker), with one recovery epoch (a pipeline on the workers), and
partitioned-sequential, on one worker
per segment with the cores divided between them) start a fresh
local cluster of the real binaries on loopback, submit the job with pnnctl,
wait for it, record its Job JSON and the workers' RSS, and stop every
process. Also measure the matrix-multiply peak (pnn-matmul-peak) and run
pnn-train's in-process partitioned training of the same spec. Writes
bench/results.json, BENCHMARKS.md and bench/plots/*.png under --out_dir.

Ablation preset: in-process pnn-train runs, one setting changed at a time
(kappa, SIL distribution, noise, split point, recovery epochs, number of
segments); writes bench/ablations.json and regenerates BENCHMARKS.md, which
keeps the main preset's sections.

  scripts/bench                                   # main preset, full run
  scripts/bench --epochs 1 --train_limit 6000 --test_limit 2000 \\
      --out_dir /tmp/bench-quick                  # a quick check
  scripts/bench --preset ablation                 # the ablations (longer)
  scripts/bench --report_only                     # report from the JSON files

Every process started here is stopped by pid on exit, also on an error,
Ctrl-C or SIGTERM.
"""

import argparse
import copy
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  (bench/report.py, beside this file)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPEC = os.path.join(REPO, "examples", "fashion_mnist.json")
# --preset wide: a network where compute, not per-call overhead, dominates.
WIDE_SPEC = os.path.join(REPO, "examples", "wide_mlp.json")
WIDE_MODES = ("conventional,model_parallel,model_parallel_gpipe,model_parallel_1f1b,"
              "partitioned,partitioned_auto")

MODES = {
    "conventional": {"parallelism": "PARALLELISM_CONVENTIONAL",
                     "input_mode": None, "split": False},
    # The pipeline with one micro-batch per batch (issue 6's baseline), and
    # micro-batched with each schedule (issue 12; --micro_batches). Every
    # pipeline runs on the cut that balances the stages' training FLOPs, as
    # a practitioner balances pipeline stages (its accuracy does not depend
    # on the cut: it trains the whole network end to end).
    "model_parallel": {"parallelism": "PARALLELISM_MODEL_PARALLEL",
                       "input_mode": None, "split": True,
                       "pipeline": {"micro_batches": 1},
                       "auto_cut": "BALANCE_OBJECTIVE_FLOPS"},
    "model_parallel_gpipe": {"parallelism": "PARALLELISM_MODEL_PARALLEL",
                             "input_mode": None, "split": True,
                             "pipeline": {"schedule": "PIPELINE_SCHEDULE_GPIPE"},
                             "auto_cut": "BALANCE_OBJECTIVE_FLOPS"},
    "model_parallel_1f1b": {"parallelism": "PARALLELISM_MODEL_PARALLEL",
                            "input_mode": None, "split": True,
                            "pipeline": {"schedule": "PIPELINE_SCHEDULE_1F1B"},
                            "auto_cut": "BALANCE_OBJECTIVE_FLOPS"},
    "partitioned": {"parallelism": "PARALLELISM_PARTITIONED",
                    "input_mode": "INPUT_MODE_SYNTHETIC_LABELS", "split": True},
    # pnn chooses the cut (auto_cut: as many segments as the spec's cut
    # makes, balancing training FLOPs), beside the spec's own cut.
    "partitioned_auto": {"parallelism": "PARALLELISM_PARTITIONED",
                         "input_mode": "INPUT_MODE_SYNTHETIC_LABELS", "split": True,
                         "auto_cut": "BALANCE_OBJECTIVE_FLOPS"},
    # The cut balancing the layers' times measured on a worker before the
    # job is planned (a profiling pass).
    "partitioned_measured": {"parallelism": "PARALLELISM_PARTITIONED",
                             "input_mode": "INPUT_MODE_SYNTHETIC_LABELS", "split": True,
                             "auto_cut": "BALANCE_OBJECTIVE_MEASURED_TIME"},
    # The spec's cut and one recovery epoch, which runs as a pipeline on the
    # workers after the segments.
    "partitioned_recovery": {"parallelism": "PARALLELISM_PARTITIONED",
                             "input_mode": "INPUT_MODE_SYNTHETIC_LABELS", "split": True,
                             "recovery_epochs": 1},
    "partitioned_sequential": {"parallelism": "PARALLELISM_PARTITIONED",
                               "input_mode": "INPUT_MODE_PREVIOUS_OUTPUTS",
                               "split": True},
}
# Spec fields only the services know; stripped for pnn-train.
SERVICE_ONLY_FIELDS = ("parallelism", "evaluations_per_epoch", "resume_checkpoints",
                       "pipeline")


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

class Processes:
    """The processes one cluster run started; stops them all on exit.

    Use as a context manager: leaving the block (normally, on an exception,
    on Ctrl-C, or on SIGTERM, which main() turns into SystemExit) sends
    SIGTERM to every process still running, waits, and SIGKILLs those that
    did not stop in time. Only the pids started here are signalled.
    """

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.procs = []  # (name, Popen, log path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
        return False

    def start(self, name, argv, env):
        log_path = os.path.join(self.log_dir, f"{name}.log")
        log = open(log_path, "wb")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=REPO)
        finally:
            log.close()
        self.procs.append((name, proc, log_path))
        return proc, log_path

    def stop_all(self, grace_seconds=15):
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_seconds
        for name, proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"bench: {name} (pid {proc.pid}) did not stop; killing it",
                      file=sys.stderr)
                proc.kill()
                proc.wait()
        self.procs = []


def read_status_bytes(pid, key):
    """A "Key: N kB" field of /proc/PID/status in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def tail(path, lines=15):
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except OSError:
        return ""


def wait_for_log(proc, log_path, pattern, timeout, what):
    """Waits until `pattern` (regex) appears in the log; returns the match."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                match = regex.search(log.read())
            if match:
                return match
        except OSError:
            pass
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}; "
                             f"log {log_path}:\n{tail(log_path)}")
        time.sleep(0.1)
    raise BenchError(f"{what}: no '{pattern}' within {timeout} s; log "
                     f"{log_path}:\n{tail(log_path)}")


# OMP_WAIT_POLICY of every started process (--omp_wait_policy).
OMP_WAIT_POLICY = "PASSIVE"


def child_env(threads):
    """Environment of a started process: BLAS threads = its --threads.

    at::set_num_threads does not reach Debian's OpenBLAS (pthread variant),
    which otherwise starts one thread per core in every process. And
    libgomp's threads spin while they wait by default: with other processes
    on the same cores (a shared machine) a 2-thread epoch measured here took
    5-11 s instead of 0.4 s; OMP_WAIT_POLICY=PASSIVE makes them sleep.
    """
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    if OMP_WAIT_POLICY:
        env["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    else:
        env.pop("OMP_WAIT_POLICY", None)
    return env


# ---------------------------------------------------------------------------
# Machine and tools
# ---------------------------------------------------------------------------

def machine_info():
    """nproc, CPU model, memory and BLAS of this machine."""
    info = {"nproc": len(os.sched_getaffinity(0)), "cpu_model": "unknown",
            "memory_bytes": None, "kernel": os.uname().release,
            "loadavg": list(os.getloadavg())}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["memory_bytes"] = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    info["memory_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    info["blas"] = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")
    return info


class Binaries:
    """Paths of pnn's binaries in a build directory."""

    def __init__(self, build_dir):
        root = build_dir if os.path.isabs(build_dir) else os.path.join(REPO, build_dir)
        self.coordinator = os.path.join(root, "coordinator", "pnn-coordinator")
        self.worker = os.path.join(root, "worker", "pnn-worker")
        self.pnnctl = os.path.join(root, "client", "pnnctl")
        self.pnn_train = os.path.join(root, "tools", "pnn_train", "pnn-train")
        self.matmul_peak = os.path.join(root, "bench", "pnn-matmul-peak")

    def check(self, names):
        missing = [getattr(self, n) for n in names
                   if not os.access(getattr(self, n), os.X_OK)]
        if missing:
            raise BenchError("missing binaries (run scripts/build): " + ", ".join(missing))


def measure_matmul(binaries, thread_counts, size, seconds):
    """{threads: GFLOP/s} of pnn-matmul-peak for each thread count."""
    results = {}
    for threads in sorted(set(thread_counts)):
        out = subprocess.run(
            [binaries.matmul_peak, "--threads", str(threads), "--size", str(size),
             "--seconds", str(seconds)],
            capture_output=True, text=True, env=child_env(threads), check=False)
        if out.returncode != 0:
            raise BenchError(f"pnn-matmul-peak --threads {threads} failed: {out.stderr}")
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        results[str(threads)] = measured["gflops"]
        print(f"bench: matmul peak on {threads} thread(s): {measured['gflops']:.1f} GFLOP/s",
              file=sys.stderr)
    return results


# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------

def load_spec(path, args):
    """The job spec with the command's overrides (epochs, limits)."""
    with open(path, encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    if "spec" in spec and isinstance(spec["spec"], dict):
        spec = spec["spec"]  # a SubmitJobRequest
    if args.epochs:
        spec.setdefault("training", {})["epochs"] = args.epochs
        for segment in spec.get("segment_training", []):
            segment["epochs"] = 0  # as pnn-train --epochs: per-segment off
    dataset = spec.setdefault("dataset", {})
    if args.train_limit is not None:
        dataset["train_limit"] = args.train_limit
    if args.test_limit is not None:
        dataset["test_limit"] = args.test_limit
    return spec


def with_defaults(spec):
    """The fields the report reads, filled as the coordinator resolves them."""
    spec = copy.deepcopy(spec)
    model = spec.setdefault("model", {})
    if not model.get("layers"):
        model.setdefault("hidden_widths", [256] * 5)
    spec["model"].setdefault("cut_after_layers", [3])
    training = spec.setdefault("training", {})
    training.setdefault("epochs", 5)
    training.setdefault("batch_size", 128)
    training.setdefault("learning_rate", 0.001)
    training.setdefault("optimizer", "OPTIMIZER_ADAM")
    spec.setdefault("dataset", {}).setdefault("path", "fashion-mnist")
    spec.setdefault("seed", "1")
    return spec


def mode_spec(base, mode, evaluations_per_epoch, micro_batches=8):
    """The spec of one benchmark mode's job."""
    spec = copy.deepcopy(base)
    spec["name"] = f"bench-{mode}"
    spec["parallelism"] = MODES[mode]["parallelism"]
    spec["evaluations_per_epoch"] = evaluations_per_epoch
    if "pipeline" in MODES[mode]:
        pipeline = dict(MODES[mode]["pipeline"])
        pipeline.setdefault("micro_batches", micro_batches)
        spec["pipeline"] = pipeline
    if "auto_cut" in MODES[mode]:
        model = spec.setdefault("model", {})
        segments = len(model.pop("cut_after_layers", [3])) + 1
        spec.pop("segment_training", None)
        spec["auto_cut"] = {"segments": segments,
                            "objective": MODES[mode]["auto_cut"]}
    if MODES[mode]["input_mode"]:
        spec.setdefault("sil", {})["input_mode"] = MODES[mode]["input_mode"]
    if "recovery_epochs" in MODES[mode]:
        spec.setdefault("recovery", {})["epochs"] = MODES[mode]["recovery_epochs"]
    return spec


def in_process_spec(base):
    """The spec for pnn-train: parallel partitioned, no service-only fields."""
    spec = copy.deepcopy(base)
    for field in SERVICE_ONLY_FIELDS:
        spec.pop(field, None)
    spec.setdefault("sil", {})["input_mode"] = "INPUT_MODE_SYNTHETIC_LABELS"
    return spec


def write_json(path, value):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(value, out, indent=1, sort_keys=False)
        out.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# One mode on a fresh cluster
# ---------------------------------------------------------------------------

def pnnctl(binaries, address, *argv, timeout=60):
    return subprocess.run([binaries.pnnctl, f"--coordinator={address}", *argv],
                          capture_output=True, text=True, timeout=timeout,
                          check=False)


def get_job(binaries, address, job_id):
    out = pnnctl(binaries, address, "get", job_id, "--output=json")
    if out.returncode != 0:
        raise BenchError(f"pnnctl get {job_id}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def preload_flags(args, spec):
    """pnn-worker flags that load the spec's (whole) data set at start."""
    dataset = spec.get("dataset") or {}
    if args.no_preload or dataset.get("train_limit") or dataset.get("test_limit"):
        return []  # a limited data set is a different cache entry
    return [f"--preload={dataset.get('path') or 'fashion-mnist'}"]


def wait_for_job(binaries, address, job_id, timeout, log_path):
    """Follows the job with `pnnctl watch` (no polling while it runs), then
    reads its final JSON; falls back to polling if the stream breaks."""
    deadline = time.monotonic() + timeout
    with open(log_path, "wb") as log:
        try:
            subprocess.run([binaries.pnnctl, f"--coordinator={address}",
                            "--output=json", "watch", job_id],
                           stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                           check=False)
        except subprocess.TimeoutExpired:
            pass
    while True:
        job = get_job(binaries, address, job_id)
        if job.get("state") in report.FINAL_STATES:
            return job
        if time.monotonic() > deadline:
            pnnctl(binaries, address, "cancel", job_id)
            raise BenchError(f"job {job_id} did not end within {timeout} s "
                             f"(state {job.get('state')}); cancelled")
        time.sleep(2)


def start_local_cluster(procs, binaries, log_dir, data_dir, nproc, workers,
                        threads, name_prefix, worker_flags=()):
    """A coordinator (nproc threads) and `workers` workers (`threads` each,
    named <name_prefix>-1..N, with worker_flags) on loopback, started with
    procs and waited for until every worker has registered. Returns the
    coordinator's process, its address and per worker a dict with name,
    proc, pid, log and address."""
    coordinator, coordinator_log = procs.start("coordinator", [
        binaries.coordinator, "--port=0", "--metrics_port=0",
        "--listen_host=127.0.0.1", f"--state_dir={os.path.join(log_dir, 'state')}",
        f"--data_dir={data_dir}", f"--threads={nproc}"], child_env(nproc))
    match = wait_for_log(coordinator, coordinator_log,
                         r"pnn-coordinator listening on ([^\s:]+):(\d+)", 60,
                         "pnn-coordinator")
    address = f"127.0.0.1:{match.group(2)}"
    started = []
    for i in range(1, workers + 1):
        name = f"{name_prefix}-{i}"
        proc, log_path = procs.start(name, [
            binaries.worker, f"--coordinator={address}", "--port=0",
            "--metrics_port=0", "--listen_host=127.0.0.1",
            f"--data_dir={data_dir}", f"--threads={threads}",
            f"--name={name}", *worker_flags], child_env(threads))
        match = wait_for_log(proc, log_path,
                             r"pnn-worker listening on ([^\s:]+):(\d+)", 60, name)
        started.append({"name": name, "proc": proc, "pid": proc.pid, "log": log_path,
                        "address": f"127.0.0.1:{match.group(2)}"})
    for worker in started:
        wait_for_log(worker["proc"], worker["log"], r"registered", 120, worker["name"])
    return coordinator, address, started


def run_mode(mode, base_spec, args, binaries, nproc, log_root):
    """Runs one mode on a fresh cluster; returns (Job JSON, run info)."""
    info = MODES[mode]
    segments = len(base_spec["model"]["cut_after_layers"]) + 1
    workers = 1 if not info["split"] else (args.workers or segments)
    threads = nproc if not info["split"] else max(1, nproc // workers)
    log_dir = os.path.join(log_root, mode)
    os.makedirs(log_dir, exist_ok=True)
    spec_path = os.path.join(log_dir, "job.json")
    write_json(spec_path, mode_spec(base_spec, mode, args.evaluations_per_epoch,
                                    args.micro_batches))
    print(f"bench: {mode}: {workers} worker(s) x {threads} thread(s); logs in {log_dir}",
          file=sys.stderr)

    with Processes(log_dir) as procs:
        coordinator, address, worker_info = start_local_cluster(
            procs, binaries, log_dir, args.data_dir, nproc, workers, threads,
            f"bench-{mode.replace('_', '-')}", preload_flags(args, base_spec))
        for worker in worker_info:
            worker["threads"] = threads
            worker["baseline_rss_bytes"] = read_status_bytes(worker["pid"], "VmRSS")

        submitted = time.monotonic()
        out = pnnctl(binaries, address, "submit", spec_path)
        if out.returncode != 0:
            raise BenchError(f"pnnctl submit ({mode}): {out.stderr.strip()}")
        job_id = out.stdout.strip().splitlines()[-1].strip()
        print(f"bench: {mode}: job {job_id} submitted", file=sys.stderr)
        job = wait_for_job(binaries, address, job_id, args.job_timeout,
                           os.path.join(log_dir, "watch.jsonl"))
        final_seconds = time.monotonic() - submitted

        for worker in worker_info:
            worker["peak_rss_bytes"] = read_status_bytes(worker["pid"], "VmHWM")
            if worker["peak_rss_bytes"] is not None and worker["baseline_rss_bytes"]:
                worker["rss_growth_bytes"] = (worker["peak_rss_bytes"]
                                              - worker["baseline_rss_bytes"])
            else:
                worker["rss_growth_bytes"] = None
            del worker["proc"], worker["log"]
        coordinator_info = {"pid": coordinator.pid,
                            "peak_rss_bytes": read_status_bytes(coordinator.pid, "VmHWM")}
    write_json(os.path.join(log_dir, "job_result.json"), job)
    run_info = {"workers": worker_info, "coordinator": coordinator_info,
                "threads_per_worker": threads, "threads_total": threads * workers,
                "submit_to_final_seconds": final_seconds}
    state = job.get("state")
    print(f"bench: {mode}: {state} {job.get('message', '')}".rstrip(), file=sys.stderr)
    return job, run_info


def run_in_process(base_spec, args, binaries, threads, log_root):
    """pnn-train's in-process partitioned run of the same spec."""
    spec_path = os.path.join(log_root, "in_process_job.json")
    write_json(spec_path, in_process_spec(base_spec))
    print(f"bench: in-process pnn-train ({threads} thread(s))", file=sys.stderr)
    started = time.monotonic()
    with open(os.path.join(log_root, "pnn-train.log"), "wb") as log:
        out = subprocess.run(
            [binaries.pnn_train, f"--job={spec_path}", f"--threads={threads}",
             f"--data_root={args.data_dir}", "--output=json", "--conventional=false"],
            stdout=subprocess.PIPE, stderr=log, env=child_env(threads),
            timeout=args.job_timeout, check=False)
    seconds = time.monotonic() - started
    if out.returncode != 0:
        raise BenchError(f"pnn-train failed ({out.returncode}); see "
                         f"{os.path.join(log_root, 'pnn-train.log')}")
    comparison = json.loads(out.stdout)
    return report.summarize_in_process(comparison, threads, seconds)


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------

def command_line(argv):
    entry = os.environ.get("PNN_BENCH_COMMAND", "bench/run_bench.py")
    return " ".join([entry] + [shlex.quote(a) for a in argv])


def run_main_preset(args, argv, binaries, log_root):
    """Runs every selected mode, the matmul peak and pnn-train; returns results."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise BenchError(f"unknown --modes {', '.join(unknown)}; "
                         f"known: {', '.join(MODES)}")
    binaries.check(["coordinator", "worker", "pnnctl", "pnn_train", "matmul_peak"])
    machine = machine_info()
    nproc = machine["nproc"]
    if machine["loadavg"][0] > 0.5 * nproc:
        print(f"bench: warning: load average {machine['loadavg'][0]:.2f} on {nproc} "
              "cores: other work shares this machine, and times will show it",
              file=sys.stderr)
    base = with_defaults(load_spec(args.spec, args))
    segments = len(base["model"]["cut_after_layers"]) + 1
    split_workers = args.workers or segments
    split_threads = max(1, nproc // split_workers)

    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(argv),
        "machine": machine,
        "spec_path": os.path.relpath(os.path.abspath(args.spec), REPO),
        "spec": base,
        "evaluations_per_epoch": args.evaluations_per_epoch,
        "environment": {"OMP_WAIT_POLICY": OMP_WAIT_POLICY or None,
                        "OPENBLAS_NUM_THREADS": "= the process's --threads"},
        "preload": not args.no_preload,
        "matmul_size": args.matmul_size,
        "done_when_configuration": report.done_when_configuration(
            base, split_workers, split_threads * split_workers, nproc),
    }
    thread_counts = {nproc, split_threads, split_threads * split_workers}
    results["matmul_gflops"] = measure_matmul(binaries, thread_counts,
                                              args.matmul_size, args.matmul_seconds)
    results["modes"] = {}
    results["jobs"] = {}
    for mode in modes:
        try:
            job, run_info = run_mode(mode, base, args, binaries, nproc, log_root)
            # The raw job stays in results.json: --report_only re-derives
            # every figure from it.
            results["jobs"][mode] = {"job": job, "run_info": run_info}
            results["modes"][mode] = report.summarize_job(
                mode, job, run_info, results["matmul_gflops"])
        except (BenchError, subprocess.SubprocessError, json.JSONDecodeError) as error:
            print(f"bench: {mode} failed: {error}", file=sys.stderr)
            results["modes"][mode] = {"mode": mode, "state": "ERROR",
                                      "error": str(error).splitlines()[0]}
    if not args.skip_in_process:
        try:
            results["in_process"] = run_in_process(base, args, binaries,
                                                   split_threads, log_root)
        except (BenchError, subprocess.SubprocessError, json.JSONDecodeError) as error:
            print(f"bench: in-process run failed: {error}", file=sys.stderr)
            results["in_process"] = {"error": str(error).splitlines()[0]}
    machine["loadavg_end"] = list(os.getloadavg())
    return results


def run_wide_preset(args, argv, binaries, log_root):
    """The main preset's cluster runs on the wide network (3 segments on 3
    workers) with the pipeline and partitioned modes; returns wide.json's
    content. pnn-train's in-process run is skipped."""
    if args.spec == DEFAULT_SPEC:
        args.spec = WIDE_SPEC
    if args.modes == ",".join(MODES):
        args.modes = WIDE_MODES
    args.skip_in_process = True
    return run_main_preset(args, argv, binaries, log_root)


def deep_cuts(num_linear, segments):
    """Cut points spreading num_linear layers evenly over `segments`."""
    return sorted({max(1, min(num_linear - 1, round(num_linear * i / segments)))
                   for i in range(1, segments)})


def ablation_plan(args):
    """(group, setting, pnn-train flags) of every ablation row."""
    rows = []
    for kappa in ("0.1", "1", "5"):
        rows.append(("kappa", kappa, [f"--kappa={kappa}"]))
    for distribution in ("uniform", "normal", "orthogonal"):
        rows.append(("SIL distribution", distribution, [f"--sil={distribution}"]))
    for noise in ("0", "0.1", "0.5"):
        rows.append(("SIL input noise std", noise, [f"--noise={noise}"]))
    for cut in range(1, 6):
        rows.append(("split point (cut after layer)", str(cut), [f"--cut_after={cut}"]))
    for epochs in (0, 1, 2):
        rows.append(("recovery epochs", str(epochs), [f"--recovery_epochs={epochs}"]))
    hidden = ",".join(["256"] * args.deep_layers)
    for k in (2, 3, 4):
        cuts = deep_cuts(args.deep_layers + 1, k)
        rows.append((f"segments K (784-256x{args.deep_layers}-10)",
                     f"K={k}, cut after {','.join(map(str, cuts))}",
                     [f"--hidden_widths={hidden}",
                      f"--cut_after={','.join(map(str, cuts))}"]))
    return rows


def run_pnn_train(binaries, args, spec_path, threads, extra, log_path):
    """One pnn-train run; returns its ComparisonReport JSON. The spec file
    already carries the command's overrides (epochs, limits)."""
    argv = [binaries.pnn_train, f"--job={spec_path}", f"--threads={threads}",
            f"--data_root={args.data_dir}", "--output=json"] + extra
    with open(log_path, "ab") as log:
        log.write(("$ " + shlex.join(argv) + "\n").encode())
        log.flush()
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log,
                             env=child_env(threads), timeout=args.job_timeout,
                             check=False)
    if out.returncode != 0:
        raise BenchError(f"pnn-train {' '.join(extra)} failed ({out.returncode}); "
                         f"see {log_path}")
    return json.loads(out.stdout)


def ablation_key(extra, base):
    """The flags that differ from the base spec: rows with equal keys are
    the same run (the defaults' row appears in several groups)."""
    defaults = {"--kappa=1", "--sil=uniform", "--noise=0", "--recovery_epochs=0",
                "--cut_after=" + ",".join(str(c) for c in base["model"]["cut_after_layers"])}
    return tuple(sorted(f for f in extra if f not in defaults))


def run_ablation_preset(args, argv, binaries, log_root):
    """Runs the ablation rows in-process; returns ablations.json's content."""
    binaries.check(["pnn_train"])
    machine = machine_info()
    threads = machine["nproc"]
    base = in_process_spec(with_defaults(load_spec(args.spec, args)))
    # The rows vary one setting each from these defaults.
    base.setdefault("sil", {}).update({"kappa": 1.0, "input_noise_std": 0.0,
                                       "distribution": "SIL_DISTRIBUTION_UNIFORM"})
    base.setdefault("recovery", {})["epochs"] = 0
    spec_path = os.path.join(log_root, "ablation_job.json")
    write_json(spec_path, base)
    log_path = os.path.join(log_root, "ablations.log")
    cache = {}
    rows = []
    plan = ablation_plan(args)
    for index, (group, setting, extra) in enumerate(plan, 1):
        row = {"group": group, "setting": setting, "flags": extra}
        key = ablation_key(extra, base)
        print(f"bench: ablation {index}/{len(plan)}: {group} = {setting}", file=sys.stderr)
        try:
            if key in cache:
                result, row["reused"] = cache[key], True
            else:
                result = run_pnn_train(binaries, args, spec_path, threads,
                                       extra + ["--conventional=false"], log_path)
                cache[key] = result
            run = result.get("partitioned") or {}
            row.update({
                "test_accuracy": report.num(run.get("test_accuracy"), None),
                "joined_test_accuracy": report.num(run.get("joined_test_accuracy"), None)
                                        or report.num(run.get("test_accuracy"), None),
                "parallel_wall_seconds": report.num(run.get("parallel_wall_seconds"), None),
                "wall_seconds": report.num(run.get("wall_seconds"), None),
                "recovery_seconds": report.num(run.get("recovery_seconds"), None),
                "segment_seconds": [report.num((s.get("cost") or {}).get("wall_seconds"))
                                    for s in run.get("segments") or []],
            })
        except (BenchError, subprocess.SubprocessError, json.JSONDecodeError) as error:
            row["error"] = str(error).splitlines()[0]
        rows.append(row)

    conventional = []
    deep_hidden = ",".join(["256"] * args.deep_layers)
    for network, extra in (("784-256x5-10 (the spec's network)", []),
                           (f"784-256x{args.deep_layers}-10", [f"--hidden_widths={deep_hidden}"])):
        print(f"bench: ablation reference: conventional {network}", file=sys.stderr)
        ref = {"network": network}
        try:
            result = run_pnn_train(binaries, args, spec_path, threads,
                                   extra + ["--partitioned=false"], log_path)
            run = result.get("conventional") or {}
            ref.update({"test_accuracy": report.num(run.get("test_accuracy"), None),
                        "wall_seconds": report.num(run.get("wall_seconds"), None)})
        except (BenchError, subprocess.SubprocessError, json.JSONDecodeError) as error:
            ref["error"] = str(error).splitlines()[0]
        conventional.append(ref)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(argv),
        "machine": machine,
        "threads": threads,
        "spec": base,
        "rows": rows,
        "conventional": conventional,
    }


CNN_SPEC = os.path.join(REPO, "examples", "fashion_mnist_cnn.json")


def cnn_cuts(base):
    """The spec's cut and the flatten layer's (the two cut positions the
    CNN preset compares), in the spec's order."""
    cuts = [base["model"]["cut_after_layers"][0]]
    for index, layer in enumerate(base["model"]["layers"], 1):
        if "flatten" in layer and index not in cuts:
            cuts.append(index)
    return cuts


def run_cnn_preset(args, argv, binaries, log_root):
    """Conventional and partitioned training of the CNN example in-process
    (pnn-train, every core), the partitioned run at two cut positions;
    returns cnn.json's content."""
    binaries.check(["pnn_train"])
    machine = machine_info()
    threads = machine["nproc"]
    spec_file = args.spec if args.spec != DEFAULT_SPEC else CNN_SPEC
    base = in_process_spec(with_defaults(load_spec(spec_file, args)))
    if not base["model"].get("layers"):
        raise BenchError(f"--preset cnn needs a layer list (model.layers) in {spec_file}")
    spec_path = os.path.join(log_root, "cnn_job.json")
    write_json(spec_path, base)
    log_path = os.path.join(log_root, "cnn.log")
    runs = [("conventional", ["--partitioned=false"])]
    cuts = cnn_cuts(base)
    for cut in cuts:
        runs.append((f"partitioned, cut after layer {cut}",
                     ["--conventional=false", f"--cut_after={cut}"]))
    # The SIL settings at the spec's cut, one changed at a time (the
    # ablations' kappa and distribution rows, for the CNN).
    for setting, flag in (("kappa 5", "--kappa=5"), ("normal SIL", "--sil=normal"),
                          ("orthogonal SIL", "--sil=orthogonal")):
        runs.append((f"partitioned, cut after layer {cuts[0]}, {setting}",
                     ["--conventional=false", f"--cut_after={cuts[0]}", flag]))
    rows = []
    for index, (name, extra) in enumerate(runs, 1):
        print(f"bench: cnn {index}/{len(runs)}: {name}", file=sys.stderr)
        row = {"run": name, "flags": extra}
        try:
            result = run_pnn_train(binaries, args, spec_path, threads, extra, log_path)
            run = result.get("partitioned") or result.get("conventional") or {}
            row.update({
                "test_accuracy": report.num(run.get("test_accuracy"), None),
                "epochs": [report.num(e.get("test_accuracy"), None)
                           for e in run.get("epochs") or []],
                "wall_seconds": report.num(run.get("wall_seconds"), None),
                "parallel_wall_seconds": report.num(run.get("parallel_wall_seconds"), None),
                "cost": run.get("cost") or {},
                "segments": [{"layers": f"{s.get('first_layer')}..{s.get('last_layer')}",
                              "cost": s.get("cost") or {}}
                             for s in run.get("segments") or []],
            })
        except (BenchError, subprocess.SubprocessError, json.JSONDecodeError) as error:
            row["error"] = str(error).splitlines()[0]
        rows.append(row)
    rows.append(run_cnn_pipeline(base, args, binaries, threads, log_root))
    machine["loadavg_end"] = list(os.getloadavg())
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(argv),
        "machine": machine,
        "threads": threads,
        "spec_path": os.path.relpath(os.path.abspath(spec_file), REPO),
        "spec": base,
        "rows": rows,
    }


def run_cnn_pipeline(base, args, binaries, nproc, log_root):
    """The micro-batched pipeline baseline (1F1B, --micro_batches) of the
    CNN on a local cluster, one worker per segment; a cnn.json row."""
    mode = "model_parallel_1f1b"
    name = f"model parallel, 1F1B, {args.micro_batches} micro-batches"
    print(f"bench: cnn: {name}", file=sys.stderr)
    row = {"run": name, "flags": [f"--micro_batches={args.micro_batches}"]}
    pipeline_args = copy.copy(args)
    pipeline_args.evaluations_per_epoch = 1
    try:
        job, run_info = run_mode(mode, base, pipeline_args, binaries, nproc,
                                 log_root)
        if job.get("state") != "JOB_STATE_SUCCEEDED":
            raise BenchError(f"{mode}: {job.get('state')} {job.get('message', '')}")
        stages = job.get("segments") or []
        row.update({
            "test_accuracy": report.num((job.get("test") or {}).get("accuracy"), None),
            "epochs": [report.num(e.get("test_accuracy"), None)
                       for e in job.get("evaluations") or []],
            "wall_seconds": report.num(job.get("training_seconds"), None),
            "segments": [{"layers": f"{s.get('first_layer')}..{s.get('last_layer')}",
                          "cost": s.get("cost") or {}} for s in stages],
            "workers": len(run_info.get("workers") or []),
            "threads_per_worker": run_info.get("threads_per_worker"),
        })
    except (BenchError, subprocess.SubprocessError, json.JSONDecodeError) as error:
        row["error"] = str(error).splitlines()[0]
    return row


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def regenerate(out_dir, analysis_path=None):
    """Writes BENCHMARKS.md (and the plots) from the JSON files in out_dir,
    with the hand-written analysis_path (if it exists) after the targets."""
    results_path = os.path.join(out_dir, "bench", "results.json")
    ablations_path = os.path.join(out_dir, "bench", "ablations.json")
    cnn_path = os.path.join(out_dir, "bench", "cnn.json")
    wide_path = os.path.join(out_dir, "bench", "wide.json")
    results = ablations = cnn = wide = None
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
        report.finish_results(results)
        plots = report.write_plots(results, os.path.join(out_dir, "bench", "plots"))
        if plots.get("error"):
            print(f"bench: no plots: {plots['error']}", file=sys.stderr)
        results["plots"] = {name: os.path.relpath(path, out_dir)
                            for name, path in plots.items() if name != "error"}
        write_json(results_path, results)
    if os.path.exists(ablations_path):
        with open(ablations_path, encoding="utf-8") as f:
            ablations = json.load(f)
    if os.path.exists(cnn_path):
        with open(cnn_path, encoding="utf-8") as f:
            cnn = json.load(f)
    if os.path.exists(wide_path):
        with open(wide_path, encoding="utf-8") as f:
            wide = report.finish_wide(json.load(f))
        write_json(wide_path, wide)
    if results is None and ablations is None and cnn is None and wide is None:
        raise BenchError(f"nothing to report: no {results_path}, {ablations_path}, "
                         f"{cnn_path} or {wide_path}")
    analysis = None
    if analysis_path and os.path.exists(analysis_path):
        with open(analysis_path, encoding="utf-8") as f:
            analysis = f.read()
    markdown = report.render_markdown(results, ablations, analysis, cnn, wide)
    path = os.path.join(out_dir, "BENCHMARKS.md")
    markdown += kept_gpu_section(path)
    with open(path, "w", encoding="utf-8") as out:
        out.write(markdown)
    print(f"bench: wrote {path}", file=sys.stderr)
    return results


GPU_BEGIN, GPU_END = "<!-- gpu:begin -->", "<!-- gpu:end -->"


def kept_gpu_section(path):
    """The GPU section of the BENCHMARKS.md at path (bench/gpu/run_gpu_bench.py
    writes it from a GPU machine's run, which this machine cannot redo), to
    carry over when the rest is rewritten; "" when there is none."""
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin, end = text.find(GPU_BEGIN), text.find(GPU_END)
    if begin < 0 or end < begin:
        return ""
    return "\n" + text[begin:end + len(GPU_END)] + "\n"


def print_summary(results):
    for target in (results or {}).get("targets", []):
        print(f"  {target['verdict']:8} {target['target']}: {target['measured']}",
              file=sys.stderr)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=os.environ.get("PNN_BENCH_COMMAND", "run_bench.py"),
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes BENCHMARKS.md, bench/results.json (main), "
               "bench/ablations.json (ablation) and bench/plots/*.png under "
               "--out_dir.")
    parser.add_argument("--preset", choices=("main", "ablation", "cnn", "wide"),
                        default="main",
                        help="main: the modes on local clusters; ablation: "
                             "in-process ablations (longer); cnn: the "
                             "convolutional example in-process, conventional "
                             "and partitioned at two cuts; wide: the pipeline "
                             "and partitioned modes on local clusters for "
                             "examples/wide_mlp.json (784-1024x6-10, 3 "
                             "segments on 3 workers). Default main.")
    parser.add_argument("--spec", default=DEFAULT_SPEC,
                        help="job spec (protobuf JSON of pnn.v1.JobSpec); default "
                             "examples/fashion_mnist.json (--preset cnn: "
                             "examples/fashion_mnist_cnn.json)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="override training.epochs (0: the spec's)")
    parser.add_argument("--train_limit", type=int, default=None,
                        help="override dataset.train_limit (0: all samples)")
    parser.add_argument("--test_limit", type=int, default=None,
                        help="override dataset.test_limit (0: all samples)")
    parser.add_argument("--evaluations_per_epoch", type=int, default=4,
                        help="test-set evaluations of the (joined) model per "
                             "epoch (default 4)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated modes of the main preset (default all: "
                             + ", ".join(MODES) + ")")
    parser.add_argument("--micro_batches", type=int, default=8,
                        help="micro-batches per batch of the model_parallel_gpipe "
                             "and model_parallel_1f1b modes (model_parallel: 1)")
    parser.add_argument("--workers", type=int, default=0,
                        help="workers of the split modes (0: one per segment); "
                             "the cores are divided between them")
    parser.add_argument("--out_dir", default=REPO,
                        help="where BENCHMARKS.md and bench/ are written "
                             "(default: the repository root)")
    parser.add_argument("--build_dir", default=os.environ.get("PNN_BUILD_DIR", "build"),
                        help="build directory of the binaries (default "
                             "$PNN_BUILD_DIR or build)")
    parser.add_argument("--data_dir", default=os.environ.get("PNN_DATA_ROOT",
                                                             "/usr/share/datasets"),
                        help="data root of the coordinator, workers and pnn-train "
                             "(default $PNN_DATA_ROOT or /usr/share/datasets)")
    parser.add_argument("--log_dir", default="",
                        help="logs and state of the runs (default: a new "
                             "directory under /tmp)")
    parser.add_argument("--matmul_size", type=int, default=1024,
                        help="matrix size of pnn-matmul-peak (default 1024)")
    parser.add_argument("--matmul_seconds", type=float, default=3,
                        help="seconds per pnn-matmul-peak measurement (default 3)")
    parser.add_argument("--job_timeout", type=int, default=7200,
                        help="seconds before a job (or pnn-train run) is given "
                             "up (default 7200)")
    parser.add_argument("--skip_in_process", action="store_true",
                        help="main preset: skip pnn-train's in-process run")
    parser.add_argument("--deep_layers", type=int, default=7,
                        help="ablation: hidden layers (width 256) of the K "
                             "segments network (default 7)")
    parser.add_argument("--omp_wait_policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY of every started process (default "
                             "PASSIVE: waiting OpenMP threads sleep instead of "
                             "spinning, which collapses multi-threaded speed on "
                             "a machine shared with other work); '' leaves the "
                             "environment's")
    parser.add_argument("--no_preload", action="store_true",
                        help="start workers cold: by default they load the "
                             "spec's data set before registering (pnn-worker "
                             "--preload), as long-running workers would have "
                             "it, so no mode's clock includes reading it")
    parser.add_argument("--analysis", default=os.path.join(REPO, "bench", "analysis.md"),
                        help="hand-written Markdown shown after the targets, if "
                             "the file exists (default bench/analysis.md): "
                             "what limits a missed target")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing; regenerate BENCHMARKS.md and the "
                             "plots from the JSON files in --out_dir")
    return parser.parse_args(argv)


def main(argv):
    global OMP_WAIT_POLICY
    args = parse_args(argv)
    OMP_WAIT_POLICY = args.omp_wait_policy
    out_dir = os.path.abspath(args.out_dir)
    args.data_dir = os.path.abspath(args.data_dir)

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)  # unwinds through Processes.__exit__

    # Ctrl-C raises KeyboardInterrupt even where the shell started us with
    # SIGINT ignored (a background job); both unwind through the cleanup.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        if args.report_only:
            print_summary(regenerate(out_dir, args.analysis))
            return 0
        log_root = args.log_dir or tempfile.mkdtemp(prefix="pnn-bench-")
        os.makedirs(log_root, exist_ok=True)
        binaries = Binaries(args.build_dir)
        if args.preset == "main":
            results = run_main_preset(args, argv, binaries, log_root)
            write_json(os.path.join(out_dir, "bench", "results.json"), results)
        elif args.preset == "cnn":
            cnn = run_cnn_preset(args, argv, binaries, log_root)
            write_json(os.path.join(out_dir, "bench", "cnn.json"), cnn)
        elif args.preset == "wide":
            wide = run_wide_preset(args, argv, binaries, log_root)
            write_json(os.path.join(out_dir, "bench", "wide.json"), wide)
        else:
            ablations = run_ablation_preset(args, argv, binaries, log_root)
            write_json(os.path.join(out_dir, "bench", "ablations.json"), ablations)
        results = regenerate(out_dir, args.analysis)
        print_summary(results if args.preset == "main" else None)
        print(f"bench: logs in {log_root}", file=sys.stderr)
        return 0
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
