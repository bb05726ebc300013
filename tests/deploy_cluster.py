"""Helpers of the deploy tests: the metric contract, PromQL metric-name
extraction, /metrics parsing, and a local pnn cluster on 127.0.0.1.

Run by /usr/bin/python3 (Debian's, which has python3-yaml); only the
standard library is imported here.
"""

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# ---------------------------------------------------------------------------
# The metric contract: family -> (type, {label: allowed values}).
# Prometheus adds the job and instance labels; histograms add le.

COORDINATOR_METRICS = {
    "pnn_coordinator_jobs_submitted_total": ("counter", {}),
    "pnn_coordinator_jobs_finished_total": (
        "counter", {"state": {"succeeded", "failed", "cancelled"}}),
    "pnn_coordinator_jobs": (
        "gauge", {"state": {"queued", "running", "assembling", "succeeded",
                            "failed", "cancelled"}}),
    "pnn_coordinator_job_duration_seconds": (
        "histogram", {"state": {"succeeded", "failed", "cancelled"}}),
    "pnn_coordinator_queued_tasks": ("gauge", {}),
    "pnn_coordinator_running_tasks": ("gauge", {}),
    "pnn_coordinator_workers_registered": ("gauge", {}),
    "pnn_coordinator_workers_healthy": ("gauge", {}),
    "pnn_coordinator_workers_busy": ("gauge", {}),
    "pnn_coordinator_task_dispatches_total": ("counter", {}),
    "pnn_coordinator_task_retries_total": ("counter", {}),
    "pnn_coordinator_workers_lost_total": ("counter", {}),
    "pnn_coordinator_network_sent_bytes_total": ("counter", {}),
    "pnn_coordinator_network_received_bytes_total": ("counter", {}),
    "pnn_coordinator_last_test_accuracy_ratio": ("gauge", {}),
}

# Label values not fixed in advance (None): checked for presence only.
# Families whose series appear only once there is something to report.
LAZY_FAMILIES = {"pnn_worker_segment_loss"}  # at a worker's first segment

WORKER_METRICS = {
    "pnn_worker_segments_total": (
        "counter", {"outcome": {"succeeded", "failed", "cancelled"}}),
    "pnn_worker_epochs_total": ("counter", {}),
    "pnn_worker_epoch_duration_seconds": ("histogram", {}),
    "pnn_worker_training_loss": ("gauge", {}),
    "pnn_worker_samples_per_second": ("gauge", {}),
    "pnn_worker_samples_trained_total": ("counter", {}),
    "pnn_worker_segment_loss": (
        "gauge", {"segment": None, "target": {"sil", "classes"}}),
    "pnn_worker_training_memory_bytes": ("gauge", {}),
    "pnn_worker_device_peak_memory_bytes": ("gauge", {}),
    "pnn_worker_pipeline_idle_ratio": ("gauge", {}),
    "pnn_worker_busy": ("gauge", {}),
    "pnn_worker_network_sent_bytes_total": ("counter", {}),
    "pnn_worker_network_received_bytes_total": ("counter", {}),
}

PROCESS_METRICS = {
    "process_cpu_seconds_total": ("counter", {}),
    "process_resident_memory_bytes": ("gauge", {}),
    "process_virtual_memory_bytes": ("gauge", {}),
    "process_start_time_seconds": ("gauge", {}),
    "process_open_fds": ("gauge", {}),
    "process_max_fds": ("gauge", {}),
    "pnn_build_info": ("gauge", {"version": None, "revision": None}),
}

CONTRACT = {**COORDINATOR_METRICS, **WORKER_METRICS, **PROCESS_METRICS}

# Labels any series may carry besides the contract's.
GENERIC_LABELS = {"job", "instance", "le", "__name__"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def family_of(series_name):
    """The contract family a series name belongs to, or None.

    A histogram's own name is not a series, only name_bucket/_sum/_count."""
    if series_name in CONTRACT:
        return None if CONTRACT[series_name][0] == "histogram" else series_name
    for suffix in HISTOGRAM_SUFFIXES:
        if series_name.endswith(suffix):
            base = series_name[: -len(suffix)]
            if base in CONTRACT and CONTRACT[base][0] == "histogram":
                return base
    return None


def families_for(process):
    """Families that a process of kind 'coordinator' or 'worker' exports."""
    own = COORDINATOR_METRICS if process == "coordinator" else WORKER_METRICS
    return {**own, **PROCESS_METRICS}


# ---------------------------------------------------------------------------
# PromQL: which series names does an expression select, and with which
# label matchers. Not a full parser: enough for the dashboard and rules,
# which `promtool` (rules) and a live Prometheus (dashboard) parse for real.

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+(?::\w+)?\}?")


def grafana_to_promql(expr, rate_interval="1m", worker=".*"):
    """Substitutes the dashboard's Grafana variables."""
    expr = expr.replace("$__rate_interval", rate_interval)
    expr = expr.replace("$__interval", rate_interval)
    expr = expr.replace("${worker}", worker).replace("$worker", worker)
    return expr


def metric_names(expr):
    """Series names selected by a PromQL expression."""
    expr = _GRAFANA_VARIABLE.sub(" ", grafana_to_promql(expr))
    stripped = _STRING.sub('""', expr)
    stripped = re.sub(r"\{[^}]*\}", " ", stripped)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)
    stripped = _GROUPING.sub(" ", stripped)
    names = set()
    for match in _IDENT.finditer(stripped):
        word = match.group(1)
        rest = stripped[match.end():].lstrip()
        if rest.startswith("("):
            continue  # a function (or an aggregation)
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def label_matchers(expr):
    """(series name, label, operator, value) of every `name{...}` selector."""
    found = []
    for selector in _SELECTOR.finditer(grafana_to_promql(expr)):
        name, body = selector.group(1), selector.group(2)
        for part in _split_matchers(body):
            match = _MATCHER.fullmatch(part)
            if match:
                found.append((name,) + match.groups())
            elif part.strip():
                found.append((name, part.strip(), "?", ""))
    return found


def _split_matchers(body):
    parts, current, quote = [], "", None
    for char in body:
        if quote:
            current += char
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
            current += char
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def check_expression(expr, where):
    """Problems of one expression against the contract (list of strings)."""
    problems = []
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: selects no metric: {expr}")
    for name in sorted(names):
        if family_of(name) is None:
            if name in CONTRACT:
                problems.append(
                    f"{where}: {name} is a histogram; use {name}_bucket, "
                    f"_sum or _count")
            else:
                problems.append(f"{where}: {name} is not in the metric contract")
    for name, label, op, value in label_matchers(expr):
        family = family_of(name)
        if family is None:
            continue
        if op == "?":
            problems.append(f"{where}: cannot read matcher '{label}' of {name}")
            continue
        allowed = CONTRACT[family][1]
        if label in GENERIC_LABELS:
            continue
        if label not in allowed:
            problems.append(f"{where}: {name} has no label '{label}' in the contract")
            continue
        if "$" in value or allowed[label] is None:
            continue
        if op in ("=", "!="):
            values = [value]
        else:
            values = value.split("|") if re.fullmatch(r"[\w|]+", value) else []
        for one in values:
            if one not in allowed[label]:
                problems.append(
                    f"{where}: {name}{{{label}{op}\"{value}\"}}: '{one}' is not "
                    f"one of {sorted(allowed[label])}")
    return problems


def dashboard_expressions(dashboard):
    """(where, expr) of every PromQL expression of a Grafana dashboard:
    panel targets (rows included) and query variables."""
    found = []

    def walk_panels(panels, prefix):
        for panel in panels:
            title = panel.get("title", "?")
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"{prefix}panel '{title}' {target.get('refId', '')}",
                                  target["expr"]))
            walk_panels(panel.get("panels", []), f"{prefix}row '{title}' / ")

    walk_panels(dashboard.get("panels", []), "")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query or "")
        expr = match.group(1) if match else query
        found.append((f"variable '{variable.get('name')}'", expr))
    return found


# ---------------------------------------------------------------------------
# The text exposition format.

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_exposition(text):
    """Returns (types, samples): {family: type} from # TYPE lines and
    [(name, {label: value}, value)]."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
            continue
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = {}
        if match.group(2):
            for part in _split_matchers(match.group(2)[1:-1]):
                m = _MATCHER.fullmatch(part)
                if m:
                    labels[m.group(1)] = m.group(3)
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        samples.append((match.group(1), labels, value))
    return types, samples


def exposition_problems(text, families, require_all_label_values=True):
    """Problems of a /metrics text against the contract families given."""
    types, samples = parse_exposition(text)
    problems = []
    by_name = {}
    for name, labels, value in samples:
        by_name.setdefault(name, []).append((labels, value))
    for family in sorted(families):
        kind, allowed = CONTRACT[family]
        if family in LAZY_FAMILIES and family not in types:
            continue  # nothing to report yet
        if family not in types:
            problems.append(f"{family}: no '# TYPE {family}' line (not exported)")
        elif types[family] != kind:
            problems.append(f"{family}: exported as {types[family]}, contract says {kind}")
        series = ([family + s for s in HISTOGRAM_SUFFIXES]
                  if kind == "histogram" else [family])
        for name in series:
            if name not in by_name:
                problems.append(f"{family}: no {name} samples")
        seen = {}
        for name in series:
            for labels, _ in by_name.get(name, []):
                for label, value in labels.items():
                    if label in GENERIC_LABELS:
                        continue
                    if label not in allowed:
                        problems.append(f"{name}: unexpected label {label}=\"{value}\"")
                        continue
                    if allowed[label] is not None and value not in allowed[label]:
                        problems.append(
                            f"{name}: {label}=\"{value}\" is not one of "
                            f"{sorted(allowed[label])}")
                    seen.setdefault(label, set()).add(value)
        if require_all_label_values and family in types:
            for label, values in allowed.items():
                if values is None:
                    continue
                missing = values - seen.get(label, set())
                if missing:
                    problems.append(
                        f"{family}: no series for {label}={sorted(missing)} yet; "
                        f"create every label value at start-up (at 0) so that "
                        f"rate()/increase() and the alerts see the first event")
    return sorted(set(problems))


# ---------------------------------------------------------------------------
# Processes.

def _die_with_parent():
    # PR_SET_PDEATHSIG: if the test is killed (ctest timeout, SIGKILL), its
    # children get SIGTERM instead of lingering.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8", "replace")


class Failure(Exception):
    pass


class Processes:
    """Processes started by a test; stop_all() ends each by its PID."""

    def __init__(self, work_dir):
        self.work_dir = work_dir
        self.started = []  # (name, Popen, log path)

    def start(self, name, argv):
        log_path = os.path.join(self.work_dir, f"{name}.log")
        log = open(log_path, "wb")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)
        log.close()
        self.started.append((name, process, log_path))
        return process, log_path

    def wait_for_line(self, name, pattern, timeout):
        """First match of regex `pattern` in the process's log (group 1)."""
        process, log_path = self._find(name)
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.M)
        while time.monotonic() < deadline:
            with open(log_path, "r", errors="replace") as f:
                match = regex.search(f.read())
            if match:
                return match.group(1)
            if process.poll() is not None:
                raise Failure(f"{name} exited with status {process.returncode} "
                              f"before printing /{pattern}/")
            time.sleep(0.05)
        raise Failure(f"{name} did not print /{pattern}/ within {timeout:.0f} s")

    def check_alive(self):
        for name, process, _ in self.started:
            if process.poll() is not None:
                raise Failure(f"{name} exited early with status {process.returncode}")

    def _find(self, name):
        for n, process, log_path in self.started:
            if n == name:
                return process, log_path
        raise KeyError(name)

    def dump_logs(self, lines=25):
        for name, _, log_path in self.started:
            print(f"--- {name} ({log_path}), last {lines} lines", file=sys.stderr)
            try:
                with open(log_path, "r", errors="replace") as f:
                    tail = f.read().splitlines()[-lines:]
            except OSError:
                tail = []
            for line in tail:
                print("    " + line, file=sys.stderr)

    def stop_all(self):
        for _, process, _ in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process, _ in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_cluster(procs, coordinator_bin, worker_bin, workers, data_root,
                  state_dir):
    """A coordinator and `workers` workers on 127.0.0.1, metrics on free
    ports. Returns {"coordinator": grpc port, "coordinator_metrics": port,
    "workers": [(grpc port, metrics port)]}."""
    procs.start("coordinator", [
        coordinator_bin, "--port=0", "--listen_host=127.0.0.1",
        "--metrics_port=0", f"--state_dir={state_dir}",
        f"--data_dir={data_root}", "--threads=1"])
    grpc_port = int(procs.wait_for_line(
        "coordinator", r"^pnn-coordinator listening on [^:\s]+:(\d+)", 30))
    metrics_port = int(procs.wait_for_line(
        "coordinator", r"^pnn-coordinator metrics on [^:\s]+:(\d+)", 30))
    cluster = {"coordinator": grpc_port, "coordinator_metrics": metrics_port,
               "workers": []}
    for i in range(1, workers + 1):
        name = f"worker{i}"
        procs.start(name, [
            worker_bin, f"--coordinator=127.0.0.1:{grpc_port}", "--port=0",
            "--listen_host=127.0.0.1", "--metrics_port=0",
            f"--data_dir={data_root}", "--threads=1", f"--name=deploy-{i}"])
        worker_grpc = int(procs.wait_for_line(
            name, r"^pnn-worker listening on [^:\s]+:(\d+)", 30))
        worker_metrics = int(procs.wait_for_line(
            name, r"^pnn-worker metrics on [^:\s]+:(\d+)", 30))
        cluster["workers"].append((worker_grpc, worker_metrics))
    return cluster


def new_work_dir(prefix):
    return tempfile.mkdtemp(prefix=prefix)
