#!/usr/bin/python3
"""Metric-contract checks of the deployment files.

  deploy_metrics.py names REPO
      Every metric that deploy/grafana/dashboards/pnn.json and
      deploy/prometheus/alerts.yml use is in the metric contract (with
      allowed label values), histograms are used through _bucket/_sum/_count,
      and the dashboard shows every family of the contract.

  deploy_metrics.py exported REPO COORDINATOR_BIN WORKER_BIN
      Starts the real pnn-coordinator and one pnn-worker on 127.0.0.1 with
      --metrics_port=0, fetches both /metrics pages and checks that every
      family the dashboard and the alerts use is exported by the process that
      owns it, with the contract's type, label values and (for histograms)
      _bucket/_sum/_count series, and no exposer_* family of
      prometheus-cpp's; then lints both pages with `promtool check
      metrics` when promtool is installed.

Exit status 0: passed; 1: failed; 77: skipped (a tool is missing).
"""

import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy_cluster as dc  # noqa: E402

SKIP = 77


def load_yaml(path):
    try:
        import yaml
    except ImportError:
        print(f"SKIP: python3-yaml is missing for {sys.executable} "
              "(scripts/setup installs python3-yaml; run with /usr/bin/python3)")
        sys.exit(SKIP)
    with open(path) as f:
        return yaml.safe_load(f)


def used_expressions(repo):
    dashboard_path = os.path.join(repo, "deploy/grafana/dashboards/pnn.json")
    alerts_path = os.path.join(repo, "deploy/prometheus/alerts.yml")
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    expressions = [(f"pnn.json {where}", expr)
                   for where, expr in dc.dashboard_expressions(dashboard)]
    alerts = load_yaml(alerts_path)
    for group in alerts.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            expressions.append((f"alerts.yml {name}", str(rule["expr"])))
    return dashboard, expressions


def used_families(expressions):
    families = set()
    for _, expr in expressions:
        for name in dc.metric_names(expr):
            family = dc.family_of(name)
            if family:
                families.add(family)
    return families


def cmd_names(repo):
    dashboard, expressions = used_expressions(repo)
    problems = []
    for where, expr in expressions:
        problems += dc.check_expression(expr, where)
    dashboard_only = [(w, e) for w, e in expressions if w.startswith("pnn.json")]
    shown = used_families(dashboard_only)
    for family in sorted(set(dc.CONTRACT) - shown):
        problems.append(f"pnn.json: no panel shows contract metric {family}")
    ids = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop()
        ids.append(panel.get("id"))
        stack += panel.get("panels", [])
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if duplicates or None in ids:
        problems.append(f"pnn.json: panel ids must be unique and set: {duplicates}")
    if dashboard.get("uid") != "pnn":
        problems.append("pnn.json: uid must stay 'pnn' (links and the home "
                        "dashboard path use it)")
    if problems:
        print("FAIL:\n  " + "\n  ".join(problems))
        return 1
    print(f"ok: {len(expressions)} expressions use {len(used_families(expressions))} "
          f"contract families; the dashboard shows all {len(dc.CONTRACT)}")
    return 0


def promtool_lint(text, what):
    promtool = shutil.which("promtool")
    if not promtool:
        print(f"note: promtool not installed, {what} not linted")
        return []
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    if result.returncode != 0:
        return [f"{what}: promtool check metrics: {line}"
                for line in output.splitlines() if line.strip()]
    return []


def cmd_exported(repo, coordinator_bin, worker_bin):
    _, expressions = used_expressions(repo)
    used = used_families(expressions)
    work = dc.new_work_dir("pnn-deploy-metrics-")
    procs = dc.Processes(work)
    data_root = os.environ.get("PNN_DATA_ROOT", "/usr/share/datasets")
    try:
        try:
            cluster = dc.start_cluster(procs, coordinator_bin, worker_bin, 1,
                                       data_root, os.path.join(work, "state"))
        except dc.Failure as e:
            print(f"FAIL: {e}")
            print("(the services must accept --metrics_port=0 and log "
                  "'<binary> metrics on 127.0.0.1:PORT')")
            procs.dump_logs()
            return 1
        pages = {
            "coordinator": dc.http_get(
                f"http://127.0.0.1:{cluster['coordinator_metrics']}/metrics"),
            "worker": dc.http_get(
                f"http://127.0.0.1:{cluster['workers'][0][1]}/metrics"),
        }
        problems = []
        for process, text in pages.items():
            families = dc.families_for(process)
            wanted = {f for f in used if f in families}
            problems += [f"{process} /metrics: {p}"
                         for p in dc.exposition_problems(text, wanted)]
            # The rest of the contract, which no panel or alert uses (none
            # today: cmd_names requires the dashboard to show everything).
            rest = set(families) - wanted
            problems += [f"{process} /metrics (contract): {p}"
                         for p in dc.exposition_problems(text, rest)]
            problems += promtool_lint(text, f"{process} /metrics")
            # rpc/metrics.cc answers /metrics itself, without the Exposer's
            # own families (exposer_request_latencies is in microseconds).
            problems += [f"{process} /metrics: {line.split()[2]} is exported"
                         for line in text.splitlines()
                         if line.startswith("# TYPE exposer_")]
        procs.check_alive()
        if problems:
            print("FAIL:\n  " + "\n  ".join(problems))
            for process, text in pages.items():
                print(f"--- {process} /metrics:\n{text}")
            return 1
        print(f"ok: coordinator and worker export the {len(used)} families the "
              f"dashboard and alerts use ({len(dc.CONTRACT)} in the contract)")
        return 0
    except (OSError, dc.Failure) as e:
        print(f"FAIL: {e}")
        procs.dump_logs()
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main(argv):
    if len(argv) >= 3 and argv[1] == "names":
        return cmd_names(argv[2])
    if len(argv) == 5 and argv[1] == "exported":
        return cmd_exported(argv[2], argv[3], argv[4])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
