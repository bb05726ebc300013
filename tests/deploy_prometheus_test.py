#!/usr/bin/python3
"""A real Prometheus scraping a real pnn cluster on 127.0.0.1.

  deploy_prometheus_test.py REPO COORDINATOR_BIN WORKER_BIN PNNCTL_BIN

Starts one pnn-coordinator and two pnn-workers (--metrics_port=0) and the
Debian `prometheus` server on a free loopback port, with a configuration
derived from deploy/prometheus/prometheus.yml: the same job names,
metrics_path and rule file (alerts.yml), but static targets on loopback and
a 1 s scrape and evaluation interval. Submits a small Fashion-MNIST job with
pnnctl, watches it to the end, then asks Prometheus's HTTP API until:

  * pnn_coordinator_jobs_finished_total{state="succeeded"} >= 1
  * pnn_worker_segments_total{outcome="succeeded"} >= 1 on both workers
  * 0.5 < pnn_coordinator_last_test_accuracy_ratio <= 1, and equal to the job's
    test accuracy that `pnnctl get` reports
  * pnn_coordinator_workers_registered == 2
  * process_resident_memory_bytes > 0 and up == 1 for all three targets

and checks that every alert rule evaluates without error and every
expression of the Grafana dashboard is accepted by Prometheus and returns
data. Everything lives in a temporary directory; every process the test
started is stopped by its PID.

Exit status 0: passed; 1: failed; 77: skipped (prometheus or yaml missing).
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_cluster as dc  # noqa: E402

SKIP = 77
JOBS = ("pnn-coordinator", "pnn-worker")


def derive_config(repo, cluster):
    import yaml
    source = os.path.join(repo, "deploy/prometheus/prometheus.yml")
    with open(source) as f:
        config = yaml.safe_load(f)
    jobs = {c["job_name"]: c for c in config.get("scrape_configs", [])}
    for job in JOBS:
        if job not in jobs:
            raise dc.Failure(f"{source} has no scrape job '{job}'")
    targets = {
        "pnn-coordinator": [f"127.0.0.1:{cluster['coordinator_metrics']}"],
        "pnn-worker": [f"127.0.0.1:{m}" for _, m in cluster["workers"]],
    }
    scrape_configs = []
    for job in JOBS:
        original = jobs[job]
        derived = {"job_name": job,
                   "metrics_path": original.get("metrics_path", "/metrics"),
                   "scheme": original.get("scheme", "http"),
                   "scrape_interval": "1s", "scrape_timeout": "1s",
                   "static_configs": [{"targets": targets[job]}]}
        scrape_configs.append(derived)
    base = os.path.dirname(source)
    rule_files = [os.path.join(base, r) for r in config.get("rule_files", [])]
    return {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": scrape_configs}


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, **params):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        return json.loads(dc.http_get(url, timeout=10))

    def query(self, expr):
        reply = self.get("/api/v1/query", query=expr)
        if reply.get("status") != "success":
            raise dc.Failure(f"query {expr!r}: {reply}")
        return reply["data"]["result"]


def values(result):
    """{instance: float} of an instant-vector result."""
    return {r["metric"].get("instance", ""): float(r["value"][1]) for r in result}


def run(repo, coordinator_bin, worker_bin, pnnctl_bin, work, procs):
    data_root = os.environ.get("PNN_DATA_ROOT", "/usr/share/datasets")
    cluster = dc.start_cluster(procs, coordinator_bin, worker_bin, 2,
                               data_root, os.path.join(work, "state"))
    coordinator = f"127.0.0.1:{cluster['coordinator']}"

    config = derive_config(repo, cluster)
    config_path = os.path.join(work, "prometheus.yml")
    import yaml
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "config", config_path],
                               capture_output=True, timeout=30)
        if check.returncode != 0:
            raise dc.Failure("derived config invalid:\n" +
                             (check.stdout + check.stderr).decode())

    # Start Prometheus; retry on another port if the free one was taken.
    for attempt in range(3):
        port = dc.free_port()
        name = f"prometheus{attempt}"
        process, _ = procs.start(name, [
            shutil.which("prometheus"), f"--config.file={config_path}",
            f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.console.templates=" + work,
            "--web.console.libraries=" + work,
            "--log.level=warn"])
        prometheus = Prometheus(port)
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                dc.http_get(prometheus.base + "/-/ready", timeout=1)
                ready = True
                break
            except OSError:
                time.sleep(0.2)
        if ready:
            break
        if process.poll() is None:
            raise dc.Failure("prometheus did not become ready in 30 s")
    else:
        raise dc.Failure("prometheus did not start (port taken three times?)")
    print(f"prometheus on 127.0.0.1:{port}, coordinator {coordinator}")

    def wait_for(what, check, timeout=30):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            procs.check_alive()
            try:
                ok, last = check()
            except dc.Failure as e:
                ok, last = False, str(e)
            if ok:
                print(f"ok: {what}: {last}")
                return
            time.sleep(0.5)
        raise dc.Failure(f"{what}: not true within {timeout} s; last: {last}")

    # Both workers registered (seen through Prometheus), so that the job's
    # two segments run on different workers.
    wait_for("pnn_coordinator_workers_registered == 2", lambda: (
        lambda v: (list(v.values()) == [2.0], v))(
            values(prometheus.query("pnn_coordinator_workers_registered"))))

    submit = subprocess.run(
        [pnnctl_bin, f"--coordinator={coordinator}", "submit",
         "--dataset=fashion-mnist", "--train_limit=6000", "--test_limit=1000",
         "--epochs=2", "--name=deploy-prometheus-test"],
        capture_output=True, timeout=60)
    job = submit.stdout.decode().strip()
    if submit.returncode != 0 or not job.startswith("job-"):
        raise dc.Failure(f"pnnctl submit exited {submit.returncode}: "
                         f"{job} {submit.stderr.decode()}")
    print(f"submitted {job}")
    watch = subprocess.run(
        [pnnctl_bin, f"--coordinator={coordinator}", "watch", job],
        capture_output=True, timeout=120)
    if watch.returncode != 0:
        raise dc.Failure(f"pnnctl watch {job} exited {watch.returncode}:\n"
                         f"{watch.stdout.decode()}{watch.stderr.decode()}")

    got = subprocess.run(
        [pnnctl_bin, f"--coordinator={coordinator}", "--output=json", "get", job],
        capture_output=True, timeout=60)
    if got.returncode != 0:
        raise dc.Failure(f"pnnctl get {job} exited {got.returncode}: "
                         f"{got.stderr.decode()}")
    job_accuracy = float(json.loads(got.stdout)["test"]["accuracy"])

    def succeeded_jobs():
        v = values(prometheus.query(
            'pnn_coordinator_jobs_finished_total{job="pnn-coordinator",state="succeeded"}'))
        return len(v) == 1 and min(v.values()) >= 1, v
    wait_for('pnn_coordinator_jobs_finished_total{state="succeeded"} >= 1',
             succeeded_jobs)

    worker_instances = {f"127.0.0.1:{m}" for _, m in cluster["workers"]}

    def segments_per_worker():
        v = values(prometheus.query(
            'sum by (instance) (pnn_worker_segments_total{job="pnn-worker",outcome="succeeded"})'))
        return set(v) == worker_instances and min(v.values()) >= 1, v
    wait_for("pnn_worker_segments_total{outcome=\"succeeded\"} >= 1 on both workers",
             segments_per_worker)

    def accuracy():
        v = values(prometheus.query("pnn_coordinator_last_test_accuracy_ratio"))
        return (len(v) == 1 and 0.5 < min(v.values()) <= 1.0 and
                abs(min(v.values()) - job_accuracy) < 1e-6), v
    wait_for("0.5 < pnn_coordinator_last_test_accuracy_ratio <= 1, equal to the "
             f"job's test accuracy {job_accuracy:.4f}", accuracy)

    # Two segments x 2 epochs x 6000 samples, counted by the workers.
    def samples_trained():
        v = values(prometheus.query(
            'sum(pnn_worker_samples_trained_total{job="pnn-worker"})'))
        return list(v.values()) == [2 * 2 * 6000.0], v
    wait_for("sum(pnn_worker_samples_trained_total) == 24000", samples_trained)

    # Each segment's loss to its own target: segment 1 to its SIL (MSE),
    # segment 2 to the classes.
    def segment_losses():
        result = prometheus.query(
            'count by (segment, target) (pnn_worker_segment_loss{job="pnn-worker"})')
        v = {(r["metric"].get("segment"), r["metric"].get("target"))
             for r in result}
        return v == {("1", "sil"), ("2", "classes")}, v
    wait_for('pnn_worker_segment_loss{segment="1",target="sil"} and '
             '{segment="2",target="classes"}', segment_losses)

    all_targets = worker_instances | {f"127.0.0.1:{cluster['coordinator_metrics']}"}

    def resident_memory():
        v = values(prometheus.query('process_resident_memory_bytes{job=~"pnn-.*"}'))
        return set(v) == all_targets and min(v.values()) > 0, v
    wait_for("process_resident_memory_bytes > 0 on all three targets",
             resident_memory)

    def targets_up():
        v = values(prometheus.query('up{job=~"pnn-.*"}'))
        return set(v) == all_targets and min(v.values()) == 1, v
    wait_for("up == 1 on all three targets", targets_up)

    # The registered count must still be 2 after the job.
    wait_for("pnn_coordinator_workers_registered == 2 after the job", lambda: (
        lambda v: (list(v.values()) == [2.0], v))(
            values(prometheus.query("pnn_coordinator_workers_registered"))))

    # Alert rules: loaded from deploy/prometheus/alerts.yml, evaluated at
    # least once, without errors (e.g. many-to-many matching).
    def rules_healthy():
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules
               if r.get("health") != "ok"]
        return bool(rules) and not bad, bad or f"{len(rules)} rules ok"
    wait_for("alert rules evaluate without errors", rules_healthy, timeout=15)
    firing = [a for a in prometheus.get("/api/v1/alerts")["data"]["alerts"]
              if a.get("state") == "firing"]
    if firing:
        raise dc.Failure(f"alerts firing on a healthy cluster: {firing}")

    # Every dashboard expression parses and returns data here. Rates use a
    # window of several scrapes; the worker variable matches every worker.
    with open(os.path.join(repo, "deploy/grafana/dashboards/pnn.json")) as f:
        dashboard = json.load(f)
    empty = []
    for where, expr in dc.dashboard_expressions(dashboard):
        promql = dc.grafana_to_promql(expr, rate_interval="1m", worker=".*")
        try:
            result = prometheus.query(promql)
        except dc.Failure as e:
            raise dc.Failure(f"dashboard {where}: {e}")
        if not result:
            empty.append(f"{where}: {promql}")
    if empty:
        raise dc.Failure("dashboard expressions without data:\n  " +
                         "\n  ".join(empty))
    print(f"ok: {len(dc.dashboard_expressions(dashboard))} dashboard "
          "expressions return data")
    labels = prometheus.get("/api/v1/label/instance/values",
                            **{"match[]": "pnn_worker_busy"})["data"]
    if set(labels) != worker_instances:
        raise dc.Failure(f"worker variable would list {labels}")


def main(argv):
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    repo, coordinator_bin, worker_bin, pnnctl_bin = argv[1:]
    repo = os.path.abspath(repo)
    if not shutil.which("prometheus"):
        print("SKIP: the prometheus server is not installed "
              "(Debian package `prometheus`; scripts/setup installs it)")
        return SKIP
    try:
        import yaml  # noqa: F401
    except ImportError:
        print(f"SKIP: python3-yaml is missing for {sys.executable}")
        return SKIP
    started = time.monotonic()
    work = dc.new_work_dir("pnn-deploy-prometheus-")
    procs = dc.Processes(work)
    try:
        run(repo, coordinator_bin, worker_bin, pnnctl_bin, work, procs)
    except (dc.Failure, OSError, subprocess.TimeoutExpired) as e:
        print(f"FAIL: {e}")
        if "metrics on" in str(e) or "listening on" in str(e):
            print("(the services must accept --metrics_port=0 and log "
                  "'<binary> metrics on 127.0.0.1:PORT')")
        procs.dump_logs()
        procs.stop_all()
        if os.environ.get("PNN_DEPLOY_KEEP"):
            print(f"(work directory kept: {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
        return 1
    finally:
        procs.stop_all()
    shutil.rmtree(work, ignore_errors=True)
    print(f"deploy prometheus test passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
