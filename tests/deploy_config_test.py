#!/usr/bin/python3
"""Checks of the deployment files that need no Docker engine or cluster.

  deploy_config_test.py k8s REPO
      deploy/k8s: every manifest parses as YAML with the expected kinds;
      Deployments' selectors match their pods, Services select existing pods
      and name existing ports; pnn containers have native gRPC liveness and
      readiness probes on their gRPC port, requests and limits, metrics
      ports matching --metrics_port and the prometheus.io annotations; the
      GPU worker requests nvidia.com/gpu and runs --device=cuda; workers
      advertise their pod IP; kustomization.yaml lists every manifest;
      prometheus/alerts.yml is identical to deploy/prometheus/alerts.yml;
      the Kubernetes Prometheus configuration passes `promtool check config`
      (kubernetes_sd_configs, which Debian's Prometheus build lacks, swapped
      for static targets) and keeps the compose configuration's job names.

  deploy_config_test.py compose REPO
      docker-compose.yml, as resolved by `docker-compose config` with the
      gpu profile: workers scale (no host ports, advertise their container
      IP), health checks use `pnnctl ... health` on each gRPC port, the gpu
      worker reserves an nvidia device and joins as `worker`, metrics ports
      match deploy/prometheus/prometheus.yml, Prometheus and Grafana mount
      their configuration, the data volume is seeded before services start.

  deploy_config_test.py docker REPO
      deploy/docker/Dockerfile's build stage installs every package of
      scripts/setup (apart from the deploy test tools), its runtime stage is
      debian:bookworm-slim with a non-root user; Dockerfile.cuda installs the
      same libraries apart from Debian's libtorch; .dockerignore keeps the
      sources the build needs.

  deploy_config_test.py runtime-libs REPO BINARY...
      Every shared library the built binaries load (ldd) comes from a Debian
      package that the runtime stage's package list pulls in (apt-cache
      depends --recurse), so the slim image can run them.

Exit status 0: passed; 1: failed; 77: skipped (a tool is missing).
"""

import fnmatch
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
# scripts/setup packages that only the deploy tests need.
# Packages scripts/setup installs for the test suite only.
DEPLOY_TEST_TOOLS = {"prometheus", "docker-compose", "python3-yaml", "curl",
                     "python3", "clang", "libclang-rt-14-dev", "openssl"}


def yaml_module():
    try:
        import yaml
        return yaml
    except ImportError:
        print(f"SKIP: python3-yaml is missing for {sys.executable} "
              "(scripts/setup installs python3-yaml; use /usr/bin/python3)")
        sys.exit(SKIP)


class Problems(list):
    def check(self, condition, message):
        if not condition:
            self.append(message)
        return condition

    def report(self, ok_message):
        if self:
            print("FAIL:\n  " + "\n  ".join(self))
            return 1
        print("ok: " + ok_message)
        return 0


# ---------------------------------------------------------------------------
# Kubernetes

def flag_value(args, flag):
    for arg in args:
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
    return None


def check_pnn_container(p, where, container, kind):
    """kind: coordinator or worker."""
    grpc_port = 50051 if kind == "coordinator" else 50052
    metrics_port = 9101 if kind == "coordinator" else 9102
    args = container.get("args", [])
    command = container.get("command", [])
    p.check(command == [f"pnn-{kind}"], f"{where}: command should be [pnn-{kind}]")
    p.check(flag_value(args, "port") == str(grpc_port),
            f"{where}: --port={grpc_port} expected")
    p.check(flag_value(args, "metrics_port") == str(metrics_port),
            f"{where}: --metrics_port={metrics_port} expected")
    p.check(flag_value(args, "listen_host") == "0.0.0.0",
            f"{where}: --listen_host=0.0.0.0 expected (probes and peers dial the pod IP)")
    ports = {port.get("name"): port.get("containerPort")
             for port in container.get("ports", [])}
    p.check(ports.get("grpc") == grpc_port, f"{where}: containerPort grpc {grpc_port}")
    p.check(ports.get("metrics") == metrics_port,
            f"{where}: containerPort metrics {metrics_port}")
    for probe_name in ("livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if p.check(isinstance(probe, dict), f"{where}: no {probe_name}"):
            grpc = probe.get("grpc")
            p.check(isinstance(grpc, dict) and grpc.get("port") == grpc_port,
                    f"{where}: {probe_name} must be a native grpc probe on {grpc_port}")
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        values = resources.get(section, {})
        p.check("cpu" in values and "memory" in values,
                f"{where}: resources.{section} needs cpu and memory")
    security = container.get("securityContext", {})
    p.check(security.get("allowPrivilegeEscalation") is False,
            f"{where}: allowPrivilegeEscalation: false expected")
    if kind == "worker":
        p.check(flag_value(args, "advertise_address") == "$(POD_IP):50052",
                f"{where}: --advertise_address=$(POD_IP):50052 expected")
        p.check(flag_value(args, "coordinator") == "$(PNN_COORDINATOR)",
                f"{where}: --coordinator=$(PNN_COORDINATOR) expected")
        env = {e["name"]: e for e in container.get("env", [])}
        p.check(env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {})
                .get("fieldPath") == "status.podIP",
                f"{where}: env POD_IP from status.podIP expected")
    for var in re.findall(r"\$\((\w+)\)", " ".join(args)):
        env_names = {e["name"] for e in container.get("env", [])}
        from_maps = [e.get("configMapRef", {}).get("name")
                     for e in container.get("envFrom", [])]
        p.check(var in env_names or from_maps,
                f"{where}: args use $({var}) but it is not defined")
    return args, resources


def cmd_k8s(repo):
    yaml = yaml_module()
    p = Problems()
    k8s = os.path.join(repo, "deploy/k8s")
    manifests = sorted(f for f in glob.glob(os.path.join(k8s, "*.yaml"))
                       if os.path.basename(f) != "kustomization.yaml")
    objects = []
    for path in manifests:
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            p.append(f"{os.path.basename(path)}: not YAML: {e}")
            continue
        for doc in docs:
            name = os.path.basename(path)
            if not p.check(isinstance(doc, dict) and "kind" in doc and
                           "apiVersion" in doc and "name" in doc.get("metadata", {}),
                           f"{name}: a document without apiVersion/kind/metadata.name"):
                continue
            objects.append((name, doc))
    by_kind = {}
    for name, doc in objects:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = (name, doc)
        if doc["kind"] != "Namespace":
            p.check(doc["metadata"].get("namespace") == "pnn",
                    f"{name}: {doc['kind']}/{doc['metadata']['name']} not in namespace pnn")

    expected = {
        "Namespace": {"pnn"},
        "ConfigMap": {"pnn-config"},
        "PersistentVolumeClaim": {"pnn-data", "pnn-state"},
        "Deployment": {"pnn-coordinator", "pnn-worker", "pnn-worker-gpu",
                       "pnn-prometheus"},
        "Service": {"pnn-coordinator", "pnn-worker", "pnn-prometheus"},
        "ServiceAccount": {"pnn-prometheus"},
        "Role": {"pnn-prometheus"},
        "RoleBinding": {"pnn-prometheus"},
    }
    for kind, names in expected.items():
        have = set(by_kind.get(kind, {}))
        p.check(names <= have, f"missing {kind}: {sorted(names - have)}")

    deployments = by_kind.get("Deployment", {})
    pods = {}  # deployment name -> (pod labels, container ports by name)
    for dname, (fname, deploy) in deployments.items():
        where = f"{fname}: Deployment/{dname}"
        spec = deploy.get("spec", {})
        template = spec.get("template", {})
        labels = template.get("metadata", {}).get("labels", {})
        selector = spec.get("selector", {}).get("matchLabels", {})
        p.check(selector and all(labels.get(k) == v for k, v in selector.items()),
                f"{where}: selector {selector} does not match pod labels {labels}")
        ports = {}
        for container in template.get("spec", {}).get("containers", []):
            for port in container.get("ports", []):
                ports[port.get("name")] = port.get("containerPort")
        pods[dname] = (labels, ports)
        for volume in template.get("spec", {}).get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                p.check(claim in by_kind.get("PersistentVolumeClaim", {}),
                        f"{where}: volume claims unknown PVC {claim}")

    def container(dname, cname):
        if dname not in deployments:
            return None
        for c in deployments[dname][1]["spec"]["template"]["spec"].get("containers", []):
            if c.get("name") == cname:
                return c
        p.append(f"Deployment/{dname}: no container named {cname}")
        return None

    c = container("pnn-coordinator", "coordinator")
    if c:
        args, _ = check_pnn_container(p, "Deployment/pnn-coordinator", c, "coordinator")
        p.check(flag_value(args, "state_dir") == "/var/lib/pnn",
                "coordinator: --state_dir=/var/lib/pnn expected")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        p.check({"/data", "/var/lib/pnn"} <= mounts,
                "coordinator: mounts for /data and /var/lib/pnn expected")
        p.check(deployments["pnn-coordinator"][1]["spec"].get("replicas") == 1,
                "coordinator: exactly one replica (it owns the job state)")
        p.check(deployments["pnn-coordinator"][1]["spec"].get("strategy", {})
                .get("type") == "Recreate",
                "coordinator: strategy Recreate (ReadWriteOnce state volume)")
    for dname in ("pnn-worker", "pnn-worker-gpu"):
        c = container(dname, "worker")
        if not c:
            continue
        args, resources = check_pnn_container(p, f"Deployment/{dname}", c, "worker")
        gpu = dname.endswith("-gpu")
        limits = resources.get("limits", {})
        p.check(("nvidia.com/gpu" in limits) == gpu,
                f"{dname}: nvidia.com/gpu limit {'expected' if gpu else 'unexpected'}")
        p.check((flag_value(args, "device") == "cuda") == gpu,
                f"{dname}: --device=cuda {'expected' if gpu else 'unexpected'}")
        image = c.get("image", "")
        p.check(("cuda" in image) == gpu,
                f"{dname}: image {image}: the GPU worker needs the CUDA image "
                "and only it")
    for dname in ("pnn-coordinator", "pnn-worker", "pnn-worker-gpu"):
        if dname not in deployments:
            continue
        template = deployments[dname][1]["spec"]["template"]
        annotations = template.get("metadata", {}).get("annotations", {})
        labels, ports = pods[dname]
        p.check(annotations.get("prometheus.io/scrape") == "true" and
                annotations.get("prometheus.io/port") == str(ports.get("metrics")) and
                annotations.get("prometheus.io/path") == "/metrics",
                f"{dname}: prometheus.io/{{scrape,port,path}} annotations must "
                "match the metrics port")
        inits = template["spec"].get("initContainers", [])
        p.check(any(i.get("command", [None])[0] == "pnn-seed-data" for i in inits),
                f"{dname}: an init container running pnn-seed-data expected")

    for sname, (fname, service) in by_kind.get("Service", {}).items():
        selector = service.get("spec", {}).get("selector", {})
        matched = [d for d, (labels, _) in pods.items()
                   if selector and all(labels.get(k) == v for k, v in selector.items())]
        if not p.check(matched, f"{fname}: Service/{sname} selects no Deployment's pods"):
            continue
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port.get("port"))
            for d in matched:
                named = pods[d][1]
                p.check(target in named or target in named.values(),
                        f"Service/{sname}: targetPort {target} not a port of {d}")
    workers_service = by_kind.get("Service", {}).get("pnn-worker")
    if workers_service:
        p.check(workers_service[1]["spec"].get("clusterIP") == "None",
                "Service/pnn-worker must be headless (clusterIP: None)")
    config = by_kind.get("ConfigMap", {}).get("pnn-config")
    if config:
        p.check(config[1].get("data", {}).get("PNN_COORDINATOR") == "pnn-coordinator:50051",
                "ConfigMap/pnn-config: PNN_COORDINATOR=pnn-coordinator:50051 expected")

    # kustomization.yaml
    kustomization_path = os.path.join(k8s, "kustomization.yaml")
    with open(kustomization_path) as f:
        kustomization = yaml.safe_load(f)
    listed = set(kustomization.get("resources", []))
    on_disk = {os.path.basename(m) for m in manifests}
    p.check(listed == on_disk,
            f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(on_disk)}")
    generated = {g["name"]: g.get("files", [])
                 for g in kustomization.get("configMapGenerator", [])}
    p.check(generated.get("pnn-prometheus") ==
            ["prometheus/prometheus.yml", "prometheus/alerts.yml"],
            "kustomization.yaml: configMapGenerator pnn-prometheus from "
            "prometheus/prometheus.yml and prometheus/alerts.yml expected")
    for files in generated.values():
        for file in files:
            p.check(os.path.isfile(os.path.join(k8s, file.split("=")[-1])),
                    f"kustomization.yaml: {file} does not exist")

    # Prometheus for Kubernetes.
    with open(os.path.join(repo, "deploy/prometheus/alerts.yml"), "rb") as a, \
            open(os.path.join(k8s, "prometheus/alerts.yml"), "rb") as b:
        p.check(a.read() == b.read(),
                "deploy/k8s/prometheus/alerts.yml differs from "
                "deploy/prometheus/alerts.yml; copy it: cp deploy/prometheus/alerts.yml "
                "deploy/k8s/prometheus/alerts.yml")
    with open(os.path.join(k8s, "prometheus/prometheus.yml")) as f:
        k8s_prometheus = yaml.safe_load(f)
    with open(os.path.join(repo, "deploy/prometheus/prometheus.yml")) as f:
        compose_prometheus = yaml.safe_load(f)
    k8s_jobs = {j["job_name"]: j for j in k8s_prometheus["scrape_configs"]}
    compose_jobs = {j["job_name"]: j for j in compose_prometheus["scrape_configs"]}
    p.check(set(k8s_jobs) == set(compose_jobs),
            f"job names differ: k8s {sorted(k8s_jobs)}, compose {sorted(compose_jobs)}")
    for job in ("pnn-coordinator", "pnn-worker"):
        if job not in k8s_jobs:
            continue
        sd = k8s_jobs[job].get("kubernetes_sd_configs", [])
        p.check(len(sd) == 1 and sd[0].get("role") == "pod" and
                sd[0].get("namespaces", {}).get("names") == ["pnn"],
                f"k8s prometheus {job}: kubernetes_sd_configs role pod in namespace pnn")
        p.check(k8s_jobs[job].get("metrics_path") ==
                compose_jobs.get(job, {}).get("metrics_path"),
                f"k8s prometheus {job}: metrics_path differs from compose")
    promtool = shutil.which("promtool")
    if promtool:
        with tempfile.TemporaryDirectory() as tmp:
            for job in k8s_prometheus["scrape_configs"]:
                if job.pop("kubernetes_sd_configs", None) is not None:
                    job["static_configs"] = [{"targets": ["pod.example:1"]}]
            with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
                yaml.safe_dump(k8s_prometheus, f)
            shutil.copy(os.path.join(k8s, "prometheus/alerts.yml"), tmp)
            result = subprocess.run([promtool, "check", "config",
                                     os.path.join(tmp, "prometheus.yml")],
                                    capture_output=True, timeout=60)
            p.check(result.returncode == 0,
                    "k8s prometheus.yml: promtool check config:\n" +
                    (result.stdout + result.stderr).decode())
    else:
        print("note: promtool not installed; k8s prometheus.yml checked as YAML only")
    return p.report(f"{len(objects)} Kubernetes objects in {len(manifests)} manifests")


# ---------------------------------------------------------------------------
# docker-compose

def cmd_compose(repo):
    yaml = yaml_module()
    compose = shutil.which("docker-compose")
    if not compose:
        print("SKIP: docker-compose is not installed (Debian package "
              "docker-compose; scripts/setup installs it)")
        return SKIP
    result = subprocess.run(
        [compose, "-f", os.path.join(repo, "docker-compose.yml"),
         "--profile", "gpu", "config"],
        capture_output=True, timeout=120, cwd=repo)
    if result.returncode != 0:
        print("FAIL: docker-compose config:\n" + result.stderr.decode())
        return 1
    config = yaml.safe_load(result.stdout)
    services = config.get("services", {})
    p = Problems()
    expected = {"data-init", "coordinator", "worker", "worker-gpu",
                "prometheus", "grafana"}
    p.check(expected <= set(services), f"services missing: {sorted(expected - set(services))}")
    if p:
        return p.report("")

    def command_text(service):
        command = services[service].get("command", [])
        return " ".join(command) if isinstance(command, list) else command

    coordinator = command_text("coordinator")
    p.check("--metrics_port=9101" in coordinator, "coordinator: --metrics_port=9101")
    p.check("--port=50051" in coordinator, "coordinator: --port=50051")
    for worker in ("worker", "worker-gpu"):
        service = services[worker]
        text = command_text(worker)
        p.check(not service.get("ports"),
                f"{worker}: no host ports (they prevent --scale)")
        p.check("container_name" not in service, f"{worker}: container_name prevents --scale")
        p.check("--coordinator=coordinator:50051" in text,
                f"{worker}: --coordinator=coordinator:50051")
        p.check("--metrics_port=9102" in text, f"{worker}: --metrics_port=9102")
        p.check(re.search(r'--advertise_address="\$+\(hostname -i[^)]*\):50052"', text),
                f"{worker}: --advertise_address from the container IP (hostname -i)")
        p.check(text.startswith("exec ") or "exec pnn-worker" in text,
                f"{worker}: `exec pnn-worker` so that SIGTERM reaches the worker")
    gpu = services["worker-gpu"]
    p.check(gpu.get("profiles") == ["gpu"], "worker-gpu: profile gpu")
    devices = (gpu.get("deploy", {}).get("resources", {}).get("reservations", {})
               .get("devices", []))
    p.check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                for d in devices), "worker-gpu: an nvidia gpu device reservation")
    p.check("--device=cuda" in command_text("worker-gpu"), "worker-gpu: --device=cuda")
    p.check("Dockerfile.cuda" in gpu.get("build", {}).get("dockerfile", ""),
            "worker-gpu: built from deploy/docker/Dockerfile.cuda")
    aliases = (gpu.get("networks", {}).get("default") or {}).get("aliases", [])
    p.check("worker" in aliases,
            "worker-gpu: network alias `worker` (Prometheus discovers workers by that name)")
    for name, port in (("coordinator", 50051), ("worker", 50052), ("worker-gpu", 50052)):
        test = services[name].get("healthcheck", {}).get("test", [])
        text = " ".join(test) if isinstance(test, list) else str(test)
        p.check(f"localhost:{port}" in text and "pnnctl" in text and
                text.rstrip().endswith("health"),
                f"{name}: healthcheck `pnnctl --coordinator=localhost:{port} ... health`")
    for name in ("coordinator", "worker", "worker-gpu"):
        depends = services[name].get("depends_on", {})
        p.check(isinstance(depends, dict) and depends.get("data-init", {})
                .get("condition") == "service_completed_successfully",
                f"{name}: depends_on data-init: service_completed_successfully")
        volumes = services[name].get("volumes", [])
        p.check(any((v.get("source") if isinstance(v, dict) else str(v).split(":")[0])
                    == "pnn-data" for v in volumes), f"{name}: mounts the pnn-data volume")
    p.check("pnn-seed-data" in command_text("data-init"), "data-init: runs pnn-seed-data")

    def binds(service):
        """{host path relative to the repository: container path}."""
        out = {}
        for v in services[service].get("volumes", []):
            if isinstance(v, dict):
                source, target = v.get("source", ""), v.get("target")
            else:  # docker-compose v1 prints SOURCE:TARGET[:MODE]
                source, target = (str(v).split(":") + [None])[:2]
            if os.path.isabs(source):
                out[os.path.relpath(source, repo)] = target
        return out
    p.check(binds("prometheus").get("deploy/prometheus") == "/etc/prometheus",
            "prometheus: deploy/prometheus mounted at /etc/prometheus")
    grafana = binds("grafana")
    p.check(grafana.get("deploy/grafana/provisioning") == "/etc/grafana/provisioning",
            "grafana: deploy/grafana/provisioning mounted at /etc/grafana/provisioning")
    dashboards_target = grafana.get("deploy/grafana/dashboards")
    with open(os.path.join(repo, "deploy/grafana/provisioning/dashboards/pnn.yml")) as f:
        provider = yaml.safe_load(f)["providers"][0]
    p.check(dashboards_target == provider["options"]["path"],
            f"grafana: dashboards mounted at {dashboards_target}, provisioning reads "
            f"{provider['options']['path']}")
    with open(os.path.join(repo, "deploy/grafana/provisioning/datasources/prometheus.yml")) as f:
        datasource = yaml.safe_load(f)["datasources"][0]
    p.check(datasource.get("url") == "http://prometheus:9090",
            "grafana datasource: http://prometheus:9090")
    p.check(any(str(port.get("target") if isinstance(port, dict) else port).endswith("3000")
                for port in services["grafana"].get("ports", [])), "grafana: port 3000")
    p.check(any(str(port.get("target") if isinstance(port, dict) else port).endswith("9090")
                for port in services["prometheus"].get("ports", [])), "prometheus: port 9090")

    # The scrape configuration matches the services.
    with open(os.path.join(repo, "deploy/prometheus/prometheus.yml")) as f:
        prometheus = yaml.safe_load(f)
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    targets = [t for s in jobs.get("pnn-coordinator", {}).get("static_configs", [])
               for t in s.get("targets", [])]
    p.check(targets == ["coordinator:9101"], f"pnn-coordinator targets {targets}")
    dns = jobs.get("pnn-worker", {}).get("dns_sd_configs", [])
    p.check(len(dns) == 1 and dns[0].get("names") == ["worker"] and
            dns[0].get("port") == 9102 and dns[0].get("type", "SRV") == "A",
            "pnn-worker: dns_sd_configs of type A on `worker`, port 9102")
    return p.report(f"{len(services)} compose services consistent")


# ---------------------------------------------------------------------------
# Dockerfile

def setup_packages(repo):
    with open(os.path.join(repo, "scripts/setup")) as f:
        text = f.read()
    match = re.search(r"PACKAGES=\((.*?)\n\)", text, re.S)
    words = []
    for line in match.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    return set(words)


def dockerfile_stages(path):
    """{stage name: [instructions]} of a Dockerfile (continuations joined)."""
    with open(path) as f:
        text = f.read()
    text = re.sub(r"\\\n", " ", text)
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            parts = line.split()
            current = parts[3] if len(parts) >= 4 and parts[2].upper() == "AS" else parts[1]
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def apt_packages(instructions):
    packages = set()
    for line in instructions:
        for match in re.finditer(r"apt-get install((?:\s+(?!&&)\S+)+)", line):
            packages |= {w for w in match.group(1).split()
                         if not w.startswith("-") and w not in ("\\",)}
    return packages


def runtime_packages(repo):
    stages = dockerfile_stages(os.path.join(repo, "deploy/docker/Dockerfile"))
    return apt_packages(stages.get("runtime", []))


def cmd_docker(repo):
    p = Problems()
    dockerfile = os.path.join(repo, "deploy/docker/Dockerfile")
    stages = dockerfile_stages(dockerfile)
    p.check(list(stages) == ["build", "runtime"],
            f"Dockerfile stages {list(stages)}, expected build then runtime")
    build = stages.get("build", [])
    runtime = stages.get("runtime", [])
    with open(dockerfile) as f:
        text = f.read()
    p.check(re.search(r"ARG DEBIAN_IMAGE=debian:bookworm\n", text) and
            build and build[0].startswith("FROM ${DEBIAN_IMAGE}"),
            "build stage: FROM debian:bookworm")
    p.check(re.search(r"ARG DEBIAN_SLIM_IMAGE=debian:bookworm-slim\n", text) and
            runtime and runtime[0].startswith("FROM ${DEBIAN_SLIM_IMAGE}"),
            "runtime stage: FROM debian:bookworm-slim")
    wanted = setup_packages(repo) - DEPLOY_TEST_TOOLS
    installed = apt_packages(build)
    p.check(wanted <= installed,
            f"build stage lacks scripts/setup packages {sorted(wanted - installed)}")
    build_text = " ".join(build)
    p.check("-DBUILD_TESTING=OFF" in build_text and "-G Ninja" in build_text,
            "build stage: cmake -G Ninja -DBUILD_TESTING=OFF")
    for target in ("pnn-coordinator", "pnn-worker", "pnnctl"):
        p.check(target in build_text, f"build stage does not build {target}")
    runtime_text = " ".join(runtime)
    p.check(not any(pkg.endswith("-dev") for pkg in apt_packages(runtime)),
            "runtime stage installs -dev packages")
    p.check("dataset-fashion-mnist" in apt_packages(runtime),
            "runtime stage: dataset-fashion-mnist")
    user = [line for line in runtime if line.upper().startswith("USER ")]
    p.check(user and not user[-1].split()[1].startswith(("root", "0")),
            "runtime stage: a non-root USER")
    exposed = set()
    for line in runtime:
        if line.upper().startswith("EXPOSE "):
            exposed |= set(line.split()[1:])
    p.check({"50051", "50052", "9101", "9102"} <= exposed,
            f"runtime stage EXPOSE {sorted(exposed)}: gRPC 50051/50052 and metrics 9101/9102")
    p.check("pnn-seed-data" in runtime_text, "runtime stage: pnn-seed-data")
    p.check(os.access(os.path.join(repo, "deploy/docker/pnn-seed-data"), os.X_OK),
            "deploy/docker/pnn-seed-data must be executable")

    # The CUDA image: same runtime libraries apart from Debian's libtorch,
    # the same build packages apart from libtorch-dev.
    cuda = dockerfile_stages(os.path.join(repo, "deploy/docker/Dockerfile.cuda"))
    p.check(list(cuda) == ["build", "runtime"],
            f"Dockerfile.cuda stages {list(cuda)}, expected build then runtime")
    cuda_runtime = apt_packages(cuda.get("runtime", []))
    missing = apt_packages(runtime) - {"libtorch1.13"} - cuda_runtime
    p.check(not missing, f"Dockerfile.cuda runtime stage lacks {sorted(missing)}")
    p.check("libtorch1.13" not in cuda_runtime,
            "Dockerfile.cuda must not install Debian's CPU libtorch")
    cuda_build = apt_packages(cuda.get("build", []))
    missing = wanted - {"libtorch-dev", "libgtest-dev", "libgmock-dev",
                        "dataset-fashion-mnist"} - cuda_build
    p.check(not missing, f"Dockerfile.cuda build stage lacks {sorted(missing)}")
    cuda_text = " ".join(cuda.get("build", []))
    p.check("LIBTORCH_URL" in cuda_text and "-DCMAKE_PREFIX_PATH=/opt/libtorch" in cuda_text,
            "Dockerfile.cuda: builds against the libtorch of LIBTORCH_URL")

    # .dockerignore keeps what the build copies.
    with open(os.path.join(repo, ".dockerignore")) as f:
        patterns = [line.strip() for line in f
                    if line.strip() and not line.startswith("#")]

    def ignored(path):
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            parts = path.split("/")
            hit = any(fnmatch.fnmatch("/".join(parts[:i]), pattern)
                      for i in range(1, len(parts) + 1))
            if pattern.startswith("**/"):
                hit = hit or any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
            if hit:
                result = not negate
        return result
    with open(os.path.join(repo, "CMakeLists.txt")) as f:
        subdirs = re.findall(r"add_subdirectory\((\S+?)\)", f.read())
    needed = ["CMakeLists.txt", "examples", "deploy/docker/pnn-seed-data"] + \
        [s for s in subdirs if s != "tests"]
    for path in needed:
        p.check(not ignored(path), f".dockerignore excludes {path}, which the image needs")
    for path in ("build", "build-deploy", ".git"):
        p.check(ignored(path), f".dockerignore should exclude {path}")
    return p.report("Dockerfile stages, packages and .dockerignore consistent")


def dpkg_file_owners(info_dir="/var/lib/dpkg/info"):
    """{path: package} from dpkg's file lists (one `dpkg-query -S` per
    library would take minutes)."""
    owners = {}
    for listing in glob.glob(os.path.join(info_dir, "*.list")):
        package = os.path.basename(listing)[:-len(".list")].split(":")[0]
        with open(listing, errors="replace") as f:
            for line in f:
                owners.setdefault(line.rstrip("\n"), package)
    return owners


def cmd_runtime_libs(repo, binaries):
    for tool in ("ldd", "dpkg-query", "apt-cache"):
        if not shutil.which(tool):
            print(f"SKIP: {tool} is missing (a Debian system is needed)")
            return SKIP
    packages = runtime_packages(repo)
    if not packages:
        print("FAIL: no apt-get install in the Dockerfile's runtime stage")
        return 1
    result = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
         "--installed"] + sorted(packages),
        capture_output=True, timeout=300)
    closure = set(packages)
    for line in result.stdout.decode().splitlines():
        line = line.strip()
        if line.startswith(("Depends:", "PreDepends:", "|Depends:", "|PreDepends:")):
            closure.add(line.split(":", 1)[1].strip().strip("<>").split(":")[0])
        elif line and not line.startswith(("|", "<")) and ":" not in line:
            closure.add(line)
    p = Problems()
    libraries = {}
    for binary in binaries:
        output = subprocess.run(["ldd", binary], capture_output=True, timeout=60)
        for line in output.stdout.decode().splitlines():
            match = re.match(r"\s*(\S+) => (\S+)", line)
            if not match:
                continue
            if match.group(2) == "not":
                p.append(f"{os.path.basename(binary)}: {match.group(1)} not found here")
                continue
            libraries[match.group(1)] = (os.path.realpath(match.group(2)),
                                         os.path.basename(binary))
    owners = dpkg_file_owners()
    for soname, (path, binary) in sorted(libraries.items()):
        owner = None
        # Merged /usr: dpkg may have recorded /lib/... for /usr/lib/....
        for candidate in (path, path.replace("/usr/lib/", "/lib/", 1)):
            if candidate in owners:
                owner = owners[candidate]
                break
        if not owner:
            p.append(f"{binary}: {soname} ({path}) belongs to no Debian package")
            continue
        p.check(owner in closure,
                f"{binary}: {soname} comes from {owner}, which the runtime stage's "
                f"packages do not pull in; add it to deploy/docker/Dockerfile "
                "(and Dockerfile.cuda)")
    return p.report(f"{len(libraries)} shared libraries of "
                    f"{', '.join(os.path.basename(b) for b in binaries)} are in the "
                    f"runtime packages' closure ({len(closure)} packages)")


def main(argv):
    if len(argv) >= 3 and argv[1] == "k8s":
        return cmd_k8s(argv[2])
    if len(argv) >= 3 and argv[1] == "compose":
        return cmd_compose(argv[2])
    if len(argv) >= 3 and argv[1] == "docker":
        return cmd_docker(argv[2])
    if len(argv) >= 4 and argv[1] == "runtime-libs":
        return cmd_runtime_libs(argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
