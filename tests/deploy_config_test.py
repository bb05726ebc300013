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
      for static targets) and keeps the compose configuration's job names;
      kustomization.yaml's `images:` has one entry per image name, with the
      manifests' names as defaults. Data: Job pnn-seed-data alone writes
      volume pnn-data (a root step with CAP_CHOWN only, then pnn-seed-data
      as uid 10001, no fsGroup); the Deployments mount it read-only (the
      claim readOnly) and wait for fashion-mnist in an init container. The
      Job's prepare-volume script runs on directories like a volume's root
      (world-writable, owned by 10001, group-writable, a chown that fails as
      under NFS root_squash, a fresh root-owned one); as root, pnn-seed-data
      then seeds the prepared directory as uid 10001 and uid 10002 (no
      shared group) reads every file. wait-for-data's script runs on a path
      that appears after 6 s: it reports every few seconds and returns.

  deploy_config_test.py kustomize REPO k8s|k8s-secure [KUBECTL]
      `kubectl kustomize deploy/OVERLAY`: every object in namespace pnn, no
      Secret rendered, the data design above on the rendered objects, each
      pod's images the kustomize images (pnn-cuda for the GPU worker), auth
      flags and Secret pnn-auth only in k8s-secure (whose Job equals
      deploy/k8s's); then a copy of both overlays whose
      deploy/k8s/kustomization.yaml names other images renders them in
      every pod. 77 without kubectl.

  deploy_config_test.py compose REPO
      docker-compose.yml, as resolved by `docker-compose config` with the
      gpu profile: workers scale (no host ports, advertise their container
      IP), health checks use `pnnctl ... health` on each gRPC port, the gpu
      worker reserves an nvidia device and joins as `worker`, metrics ports
      match deploy/prometheus/prometheus.yml, Prometheus and Grafana mount
      their configuration, the data volume is seeded before services start.

  deploy_config_test.py compose-secure REPO
      docker-compose.secure.yml over docker-compose.yml (gpu profile): the
      coordinator and the workers keep every flag of docker-compose.yml and
      add --token_file and --tls_cert/--tls_key/--tls_ca; every such path is
      a secret of that service (/run/secrets/NAME) whose file is the one
      scripts/make-deploy-secrets writes for that role, and no service gets
      another role's key; health checks speak TLS with the same files
      (workers present their certificate: mutual TLS); the worker command,
      run by sh with stand-ins for pnn-worker and hostname, passes those
      flags; the network's subnet is the one make-deploy-secrets puts into
      the worker certificate; deploy/secrets is ignored by git and docker.

  deploy_config_test.py k8s-secure REPO
      deploy/k8s-secure: the overlay's JSON patches applied to deploy/k8s
      (and, where kubectl is installed, the same result from `kubectl
      kustomize`): the coordinator and workers keep every base argument and
      add the auth flags; every path is a file of a read-only mount of
      Secret pnn-auth that the pod mounts with only its own key, and a key
      of secret.template.yaml, which holds placeholders only and is not
      applied by the overlay; probes are exec probes of `pnnctl ... health`
      with the same TLS files; the worker command, run by sh with the
      pod's environment, advertises the pod DNS name the worker certificate
      names (A-B-C-D.pnn.pod.cluster.local).

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
import time

SKIP = 77
# Packages scripts/setup installs for the tests, the fuzz targets, the
# benchmark's plots and the Python examples (examples/load_model.py,
# client/python) only: the images do not need them.
DEPLOY_TEST_TOOLS = {"prometheus", "docker-compose", "python3-yaml", "curl",
                     "python3", "clang", "libclang-rt-14-dev", "openssl",
                     "gnuplot-nox", "python3-torch", "python3-numpy",
                     "python3-onnx", "python3-grpcio", "python3-protobuf"}


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
        "Job": {"pnn-seed-data"},
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
    # Data: seeded by Job pnn-seed-data, read-only everywhere else; its
    # scripts run here on directories like a volume's root.
    documents = {(kind, name): doc for kind, named in by_kind.items()
                 for name, (_, doc) in named.items()}
    for (kind, name), doc in documents.items():
        if kind == "Job":
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                p.check(not claim or claim in by_kind.get("PersistentVolumeClaim", {}),
                        f"Job/{name}: volume claims unknown PVC {claim}")
    prepare, wait = check_data_seeding(p, documents)
    if prepare and len(prepare.get("command", [])) == 7:
        with tempfile.TemporaryDirectory(prefix="k8s-prepare-") as tmp:
            fresh_volume = run_prepare_volume(p, prepare, tmp)
            if fresh_volume and wait:
                run_seed_and_read(p, repo, fresh_volume, wait)
    if wait:
        run_wait_for_data(p, wait)
    with open(os.path.join(repo, "deploy/docker/Dockerfile")) as f:
        p.check("dataset-fashion-mnist" in f.read(),
                "deploy/docker/Dockerfile must install dataset-fashion-mnist, the data "
                f"set ({SEEDED_DATA_SET}) the pods wait for")
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
    # Kustomize's image transformer matches by name, whatever the tag: an
    # entry for the CPU image's name would rewrite the GPU worker's image.
    # Every image has an entry whose defaults are what the manifests say, so
    # that a user changes images in those lines only.
    image_names = {}
    for kind in ("Deployment", "Job"):
        for dname, (fname, deploy) in by_kind.get(kind, {}).items():
            pod = deploy["spec"]["template"]["spec"]
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                image = c.get("image", "")
                image_names.setdefault(image.rsplit(":", 1)[0], set()).add(image)
    entries = {e.get("name"): e for e in kustomization.get("images", []) or []}
    p.check(set(entries) == set(image_names),
            f"kustomization.yaml: images entries {sorted(entries)}, the manifests use "
            f"{sorted(image_names)}")
    for name, entry in entries.items():
        images = image_names.get(name, set())
        p.check(len(images) <= 1,
                f"kustomization.yaml: images entry {name} rewrites "
                f"{sorted(images)} alike (the GPU worker would get the CPU image)")
        p.check(images == {f"{entry.get('newName')}:{entry.get('newTag')}"},
                f"kustomization.yaml: images entry {name}: newName:newTag "
                f"{entry.get('newName')}:{entry.get('newTag')}, the manifests say "
                f"{sorted(images)}; keep the defaults equal")

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
        p.check(re.search(r'--advertise_address="\$+\(hostname\):50052"', text),
                f"{worker}: --advertise_address from the container's hostname "
                "(its DNS name on the project network)")
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
    # Safe defaults: published on 127.0.0.1 only; no fixed Grafana password;
    # no Prometheus lifecycle API; worker threads follow a CPU quota.
    def published(service):
        """[(host_ip, container port)] of the service's published ports."""
        out = []
        for port in services[service].get("ports", []):
            if isinstance(port, dict):
                out.append((port.get("host_ip", ""), str(port.get("target"))))
            else:  # docker-compose v1: [HOST_IP:]PUBLISHED:TARGET[/PROTO]
                parts = str(port).split("/")[0].split(":")
                out.append((parts[0] if len(parts) == 3 else "", parts[-1]))
        return out
    for service, port in (("coordinator", "50051"), ("prometheus", "9090"),
                          ("grafana", "3000")):
        p.check(published(service) == [("127.0.0.1", port)],
                f"{service}: port {port} published on 127.0.0.1 only by "
                f"default, got {published(service)}")
    p.check("--web.enable-lifecycle" not in command_text("prometheus"),
            "prometheus: the lifecycle API must be off by default")
    grafana_env = services["grafana"].get("environment", {})
    p.check("GF_SECURITY_ADMIN_PASSWORD" not in grafana_env and
            grafana_env.get("GF_SECURITY_ADMIN_PASSWORD__FILE", "").startswith("/run/"),
            "grafana: the admin password comes from a file (grafana-init), "
            "never a fixed default")
    init = services.get("grafana-init", {})
    p.check("pnn-grafana-password" in " ".join(init.get("command", [])),
            "grafana-init: runs pnn-grafana-password")
    p.check(services["grafana"].get("depends_on", {}).get("grafana-init", {})
            .get("condition") == "service_completed_successfully",
            "grafana: depends_on grafana-init: service_completed_successfully")
    p.check(float(services["worker"].get("cpus", 0)) > 0 and
            "--threads=0" in command_text("worker"),
            "worker: a `cpus:` quota and --threads=0 (threads follow it)")

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
# Authentication and TLS (opt-in overlays)

AUTH_FLAGS = ("token_file", "tls_cert", "tls_key", "tls_ca")


def role_files(role):
    """{flag: file name} a coordinator or worker reads its secrets from."""
    return {"token_file": "token", "tls_cert": f"{role}.pem",
            "tls_key": f"{role}.key", "tls_ca": "ca.pem"}


def last_flag(args, flag):
    value = None
    for arg in args:
        if arg.startswith(f"--{flag}="):
            value = arg.split("=", 1)[1]
    return value


def run_with_stand_ins(command, env, stand_ins):
    """Runs COMMAND (a list, e.g. [sh, -c, SCRIPT, ...]) with executables
    named like the keys of STAND_INS (shell script bodies) first on PATH;
    returns the arguments the pnn-worker stand-in received."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "args")
        scripts = dict(stand_ins)
        scripts["pnn-worker"] = f"printf '%s\\n' \"$@\" > {shlex.quote(out)}"
        for name, body in scripts.items():
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n" + body + "\n")
            os.chmod(path, 0o755)
        full_env = dict(env)
        full_env["PATH"] = tmp + ":" + os.environ.get("PATH", "/usr/bin:/bin")
        result = subprocess.run(command, env=full_env, capture_output=True,
                                timeout=30)
        if result.returncode != 0 or not os.path.exists(out):
            return None, result.stderr.decode()
        with open(out) as f:
            return f.read().splitlines(), ""


def check_secrets_not_committed(p, repo):
    """deploy/secrets is ignored by git and by the image build, and no
    private key or filled-in token lies in the tracked deployment files."""
    ignore = os.path.join(repo, "deploy/secrets/.gitignore")
    if p.check(os.path.isfile(ignore), "deploy/secrets/.gitignore missing"):
        with open(ignore) as f:
            lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
        p.check(lines[:1] == ["*"] and set(lines[1:]) <= {"!.gitignore"},
                "deploy/secrets/.gitignore must ignore everything but itself")
    with open(os.path.join(repo, ".dockerignore")) as f:
        patterns = {l.strip().rstrip("/") for l in f if l.strip()}
    p.check("deploy/secrets" in patterns,
            ".dockerignore must exclude deploy/secrets (keys in the build context)")
    paths = glob.glob(os.path.join(repo, "docker-compose*.yml"))
    for root, dirs, files in os.walk(os.path.join(repo, "deploy")):
        dirs[:] = [d for d in dirs if os.path.join(root, d) !=
                   os.path.join(repo, "deploy/secrets")]
        paths += [os.path.join(root, f) for f in files]
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        p.check("PRIVATE KEY-----" not in text and "BEGIN CERTIFICATE" not in text,
                f"{os.path.relpath(path, repo)}: key or certificate material "
                "in a deployment file")


def cmd_compose_secure(repo):
    yaml = yaml_module()
    compose = shutil.which("docker-compose")
    if not compose:
        print("SKIP: docker-compose is not installed (Debian package "
              "docker-compose; scripts/setup installs it)")
        return SKIP
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PNN_", "COMPOSE_"))}

    def resolved(*files):
        command = [compose]
        for name in files:
            command += ["-f", os.path.join(repo, name)]
        result = subprocess.run(command + ["--profile", "gpu", "config"],
                                capture_output=True, timeout=120, cwd=repo,
                                env=env)
        if result.returncode != 0:
            return None, result.stderr.decode()
        return yaml.safe_load(result.stdout), ""
    base, error = resolved("docker-compose.yml")
    if base is None:
        print("FAIL: docker-compose config:\n" + error)
        return 1
    secure, error = resolved("docker-compose.yml", "docker-compose.secure.yml")
    if secure is None:
        print("FAIL: docker-compose config with docker-compose.secure.yml:\n" + error)
        return 1
    p = Problems()
    secrets = secure.get("secrets", {})
    secrets_dir = os.path.join(repo, "deploy/secrets")
    for name, secret in secrets.items():
        p.check(os.path.dirname(secret.get("file", "")) == secrets_dir,
                f"secret {name}: file {secret.get('file')} not in deploy/secrets "
                "(PNN_SECRETS_DIR unset)")

    def flags(service, config):
        command = config["services"][service].get("command", [])
        if isinstance(command, list) and command[:2] == ["sh", "-c"]:
            return shlex.split(command[2].replace("$$", "$"))
        return command if isinstance(command, list) else shlex.split(command)

    for service, role, port in (("coordinator", "coordinator", 50051),
                                ("worker", "worker", 50052),
                                ("worker-gpu", "worker", 50052)):
        spec = secure["services"][service]
        args = flags(service, secure)
        base_args = flags(service, base)
        # The overlay advertises the container IP (its certificates list the
        # subnet's addresses) where the base file advertises the hostname.
        def without_address(a):
            return [x for x in a if not x.startswith("--advertise_address=")]
        if role == "worker":
            args, base_args = without_address(args), without_address(base_args)
        p.check(args[:len(base_args)] == base_args,
                f"{service}: the secure command must start with docker-compose.yml's "
                f"command\n    {base_args}\n  got\n    {args[:len(base_args)]}")
        mounted = {}
        for entry in spec.get("secrets", []):
            source = entry.get("source") if isinstance(entry, dict) else entry
            target = entry.get("target", source) if isinstance(entry, dict) else entry
            mounted[f"/run/secrets/{target}"] = source
        used = set()
        for flag, file_name in role_files(role).items():
            path = last_flag(args, flag)
            if not p.check(path, f"{service}: --{flag} missing"):
                continue
            source = mounted.get(path)
            if not p.check(source, f"{service}: --{flag}={path} is not a secret "
                           f"of the service (mounted: {sorted(mounted)})"):
                continue
            used.add(source)
            p.check(source in secrets and
                    os.path.basename(secrets[source].get("file", "")) == file_name,
                    f"{service}: --{flag} reads secret {source}, which should be "
                    f"deploy/secrets/{file_name}")
        p.check(set(mounted.values()) == used,
                f"{service}: secrets {sorted(set(mounted.values()) - used)} are "
                "mounted but not used (another role's key?)")
        other = "worker" if role == "coordinator" else "coordinator"
        p.check(not any(os.path.basename(secrets.get(s, {}).get("file", "")) ==
                        f"{other}.key" for s in mounted.values()),
                f"{service}: gets the {other}'s private key")
        test = spec.get("healthcheck", {}).get("test", [])
        p.check(test[:3] == ["CMD", "pnnctl", f"--coordinator=localhost:{port}"] and
                test[-1] == "health",
                f"{service}: healthcheck `pnnctl --coordinator=localhost:{port} ... health`")
        p.check(last_flag(test, "tls_ca") == last_flag(args, "tls_ca"),
                f"{service}: the health check must verify with the service's --tls_ca")
        if role == "worker":
            p.check(last_flag(test, "tls_cert") == last_flag(args, "tls_cert") and
                    last_flag(test, "tls_key") == last_flag(args, "tls_key"),
                    f"{service}: the health check must present the worker's "
                    "certificate (workers require client certificates)")
            command = spec["command"]
            ran, error = run_with_stand_ins(
                ["sh", "-c", command[2].replace("$$", "$")], {},
                {"hostname": 'if [ "$1" = -i ]; then echo "172.28.51.7 fd00::7"; '
                             'else echo c0ffee; fi'})
            if p.check(ran is not None, f"{service}: the command fails under sh: {error}"):
                p.check(last_flag(ran, "advertise_address") == "172.28.51.7:50052",
                        f"{service}: advertises {last_flag(ran, 'advertise_address')}")
                for flag, file_name in role_files(role).items():
                    p.check(last_flag(ran, flag) == last_flag(args, flag),
                            f"{service}: pnn-worker does not receive --{flag}")
    # The worker certificate lists the subnet's addresses.
    with open(os.path.join(repo, "scripts/make-deploy-secrets")) as f:
        script_subnet = re.search(r"PNN_SUBNET:-([0-9./]+)", f.read())
    subnets = [c.get("subnet") for c in secure.get("networks", {}).get("default", {})
               .get("ipam", {}).get("config", [])]
    p.check(script_subnet and subnets == [script_subnet.group(1)],
            f"network default: subnet {subnets}, scripts/make-deploy-secrets "
            f"certifies {script_subnet and script_subnet.group(1)}")
    check_secrets_not_committed(p, repo)
    return p.report("docker-compose.secure.yml: token and TLS flags, secrets and "
                    "health checks consistent")


def json_pointer_apply(document, op):
    """One RFC 6902 add/replace/remove operation, in place."""
    parts = [part.replace("~1", "/").replace("~0", "~")
             for part in op["path"].lstrip("/").split("/")]
    parent = document
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if op["op"] == "add":
        if isinstance(parent, list):
            if last == "-":
                parent.append(op["value"])
            else:
                parent.insert(int(last), op["value"])
        else:
            parent[last] = op["value"]
    elif op["op"] == "replace":
        key = int(last) if isinstance(parent, list) else last
        if not isinstance(parent, list) and last not in parent:
            raise KeyError(f"replace of missing {op['path']}")
        parent[key] = op["value"]
    elif op["op"] == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise ValueError(f"unsupported op {op['op']}")


def k8s_expand(text, env):
    """Kubernetes' $(VAR) expansion of command and args: $$ is a literal $,
    $(NAME) a defined variable, anything else stays as written."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            end = text.find(")", i)
            name = text[i + 2:end] if end >= 0 else None
            if name is not None and name in env:
                out.append(env[name])
                i = end + 1
            else:
                out.append("$")
                i += 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def cmd_k8s_secure(repo):
    yaml = yaml_module()
    p = Problems()
    base_dir = os.path.join(repo, "deploy/k8s")
    overlay_dir = os.path.join(repo, "deploy/k8s-secure")
    objects = {}
    for path in sorted(glob.glob(os.path.join(base_dir, "*.yaml"))):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    objects[(doc["kind"], doc["metadata"]["name"])] = doc
    base = {key: yaml.safe_load(yaml.safe_dump(doc)) for key, doc in objects.items()}
    with open(os.path.join(overlay_dir, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    p.check(kustomization.get("resources") == ["../k8s"],
            "deploy/k8s-secure/kustomization.yaml: resources [../k8s] expected")
    patched = set()
    for patch in kustomization.get("patches", []):
        target = patch.get("target", {})
        key = (target.get("kind"), target.get("name"))
        if not p.check(key in objects, f"patch {patch.get('path')}: no {key} in deploy/k8s"):
            continue
        with open(os.path.join(overlay_dir, patch["path"])) as f:
            ops = yaml.safe_load(f)
        try:
            for op in ops:
                json_pointer_apply(objects[key], op)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            p.append(f"patch {patch['path']} on {key}: {e!r}")
        patched.add(key)
    for key in (("Deployment", "pnn-coordinator"), ("Deployment", "pnn-worker"),
                ("Deployment", "pnn-worker-gpu"), ("ConfigMap", "pnn-config")):
        p.check(key in patched, f"the overlay does not patch {key[0]}/{key[1]}")
    if p:
        return p.report("")

    kubectl = shutil.which("kubectl")
    if kubectl:
        result = subprocess.run([kubectl, "kustomize", overlay_dir],
                                capture_output=True, timeout=120)
        if p.check(result.returncode == 0,
                   "kubectl kustomize deploy/k8s-secure:\n" + result.stderr.decode()):
            rendered = {(d["kind"], d["metadata"]["name"]): d
                        for d in yaml.safe_load_all(result.stdout) if d}
            for key in patched:
                ours = objects[key]
                theirs = rendered.get(key)
                if key[0] == "Deployment":
                    ours = ours["spec"]["template"]["spec"]
                    theirs = (theirs or {}).get("spec", {}).get("template", {}).get("spec")
                else:
                    ours, theirs = ours.get("data"), (theirs or {}).get("data")
                p.check(ours == theirs,
                        f"{key[0]}/{key[1]}: kubectl kustomize renders it differently "
                        "from the JSON patches applied here")
    else:
        print("note: kubectl not installed; the overlay was applied by this test only")

    with open(os.path.join(overlay_dir, "secret.template.yaml")) as f:
        template = yaml.safe_load(f)
    p.check(template.get("kind") == "Secret" and
            template.get("metadata", {}).get("name") == "pnn-auth" and
            template.get("metadata", {}).get("namespace") == "pnn",
            "secret.template.yaml: Secret pnn-auth in namespace pnn expected")
    template_keys = set(template.get("stringData", {})) | set(template.get("data", {}))
    p.check(all(str(v).startswith("REPLACE_") for v in
                template.get("stringData", {}).values()) and not template.get("data"),
            "secret.template.yaml: placeholders (REPLACE_...) only")
    p.check("secret.template.yaml" not in kustomization.get("resources", []) and
            not kustomization.get("secretGenerator"),
            "the overlay must not apply the template or generate the Secret")

    config = objects[("ConfigMap", "pnn-config")]["data"]
    used_keys = set()
    for dname, role, port in (("pnn-coordinator", "coordinator", 50051),
                              ("pnn-worker", "worker", 50052),
                              ("pnn-worker-gpu", "worker", 50052)):
        where = f"Deployment/{dname}"
        pod = objects[("Deployment", dname)]["spec"]["template"]["spec"]
        base_pod = base[("Deployment", dname)]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        base_c = base_pod["containers"][0]
        args = c.get("args", [])
        base_args = base_c.get("args", [])
        p.check(args[:len(base_args)] == base_args,
                f"{where}: the overlay must keep the base arguments and append")
        p.check(pod.get("securityContext", {}).get("fsGroup") == 10001,
                f"{where}: fsGroup 10001 (the secret files are group-readable)")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {}
        for m in c.get("volumeMounts", []):
            volume = volumes.get(m["name"], {})
            if volume.get("secret", {}).get("secretName") == "pnn-auth":
                p.check(m.get("readOnly") is True, f"{where}: mount {m['mountPath']} "
                        "of pnn-auth must be readOnly")
                p.check(volume["secret"].get("defaultMode", 0o644) & 0o007 == 0,
                        f"{where}: pnn-auth files must not be world-readable")
                items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
                p.check(items, f"{where}: mount pnn-auth with items (only this "
                        "role's files)")
                mounts[m["mountPath"].rstrip("/")] = items
        mounted_keys = set()
        for items in mounts.values():
            mounted_keys |= set(items.values())
        used = set()
        for flag, file_name in role_files(role).items():
            path = last_flag(args, flag)
            if not p.check(path, f"{where}: --{flag} missing"):
                continue
            directory, name = os.path.split(path)
            items = mounts.get(directory)
            if not p.check(items is not None and name in items,
                           f"{where}: --{flag}={path} is not a file of a pnn-auth mount"):
                continue
            key = items[name]
            used.add(key)
            p.check(key == file_name, f"{where}: --{flag} reads key {key}, "
                    f"expected {file_name}")
            p.check(key in template_keys,
                    f"{where}: key {key} is not in secret.template.yaml")
        used_keys |= used
        p.check(mounted_keys == used, f"{where}: mounts keys "
                f"{sorted(mounted_keys - used)} it does not use (another role's key?)")
        for probe_name in ("livenessProbe", "readinessProbe"):
            probe = c.get(probe_name, {})
            command = probe.get("exec", {}).get("command", [])
            if not p.check(command[:2] == ["pnnctl", f"--coordinator=localhost:{port}"]
                           and command[-1:] == ["health"] and "grpc" not in probe,
                           f"{where}: {probe_name} must exec `pnnctl "
                           f"--coordinator=localhost:{port} ... health` (native gRPC "
                           "probes cannot speak TLS)"):
                continue
            p.check(last_flag(command, "tls_ca") == last_flag(args, "tls_ca"),
                    f"{where}: {probe_name} must verify with the container's --tls_ca")
            if role == "worker":
                p.check(last_flag(command, "tls_cert") == last_flag(args, "tls_cert") and
                        last_flag(command, "tls_key") == last_flag(args, "tls_key"),
                        f"{where}: {probe_name} must present the worker's certificate")
        if role == "worker":
            # What the pod runs: Kubernetes expands $(VAR) in command and
            # args, then sh runs the script.
            env = {"POD_IP": "10.1.2.3", "POD_NAME": "pnn-worker-abc",
                   "PNN_THREADS": "4"}
            env.update({k: str(v) for k, v in config.items()})
            env_names = {e["name"]: e for e in c.get("env", [])}
            p.check(env_names.get("POD_NAMESPACE", {}).get("valueFrom", {})
                    .get("fieldRef", {}).get("fieldPath") == "metadata.namespace",
                    f"{where}: env POD_NAMESPACE from metadata.namespace expected")
            env["POD_NAMESPACE"] = "pnn"
            command = [k8s_expand(x, env) for x in c.get("command", [])]
            expanded = [k8s_expand(x, env) for x in args]
            p.check(command[:2] == ["sh", "-c"] and "exec pnn-worker \"$@\"" in
                    command[2], f"{where}: command sh -c 'exec pnn-worker \"$@\" ...'")
            ran, error = run_with_stand_ins(command + expanded, env, {})
            if p.check(ran is not None, f"{where}: the command fails under sh: {error}"):
                p.check(ran[:len(expanded)] == expanded,
                        f"{where}: pnn-worker does not receive the arguments first")
                p.check(last_flag(ran, "advertise_address") ==
                        "10-1-2-3.pnn.pod.cluster.local:50052",
                        f"{where}: advertises {last_flag(ran, 'advertise_address')}, "
                        "expected the pod DNS name 10-1-2-3.pnn.pod.cluster.local:50052")
    p.check(config.get("PNN_CLUSTER_DOMAIN") == "cluster.local",
            "ConfigMap/pnn-config: PNN_CLUSTER_DOMAIN=cluster.local expected")
    p.check(used_keys == template_keys,
            f"secret.template.yaml keys {sorted(template_keys)}, pods read "
            f"{sorted(used_keys)}")
    with open(os.path.join(repo, "scripts/make-deploy-secrets")) as f:
        script = f.read()
    p.check("*.pnn.pod.$domain" in script,
            "scripts/make-deploy-secrets k8s must certify *.pnn.pod.<domain>")
    check_secrets_not_committed(p, repo)
    return p.report("deploy/k8s-secure: token and TLS flags, Secret mounts, probes "
                    "and advertised names consistent")


# ---------------------------------------------------------------------------
# Kubernetes: data seeding (Job pnn-seed-data) and `kubectl kustomize`

SEED_UID = 10001
# The data set the image ships (Debian's dataset-fashion-mnist, in
# /usr/share/datasets/fashion-mnist), which the pods wait for.
SEEDED_DATA_SET = "fashion-mnist"
# prepare-volume's exit status when root cannot make /data writable: the
# Job's podFailurePolicy fails the Job on it instead of retrying.
PREPARE_VOLUME_GIVES_UP = 3
# pnn-seed-data as a command, or called by a shell script (not a mere
# mention in a message).
SEEDER_CALL = re.compile(r"\A(?:\S*/)?pnn-seed-data\Z|(?:^|[;&|(]|\bexec|\bthen|\bdo)"
                         r"[ \t]*(?:\S*/)?pnn-seed-data\b", re.M)
# The pods that read the data volume.
DATA_READERS = ("pnn-coordinator", "pnn-worker", "pnn-worker-gpu")


def pod_containers(pod):
    return [("initContainers", c) for c in pod.get("initContainers", []) or []] + \
        [("containers", c) for c in pod.get("containers", []) or []]


def data_volume_names(pod):
    return {v["name"] for v in pod.get("volumes", []) or []
            if v.get("persistentVolumeClaim", {}).get("claimName") == "pnn-data"}


def check_hardened(p, where, c, run_as_root=False):
    security = c.get("securityContext", {}) or {}
    p.check(security.get("allowPrivilegeEscalation") is False,
            f"{where}: allowPrivilegeEscalation: false expected")
    p.check(security.get("readOnlyRootFilesystem") is True,
            f"{where}: readOnlyRootFilesystem: true expected")
    caps = security.get("capabilities", {}) or {}
    p.check(caps.get("drop") == ["ALL"], f"{where}: capabilities drop [ALL] expected")
    p.check((caps.get("add") or []) == (["CHOWN"] if run_as_root else []),
            f"{where}: capabilities add {caps.get('add')}, expected "
            f"{['CHOWN'] if run_as_root else 'none'}")
    resources = c.get("resources", {}) or {}
    for section in ("requests", "limits"):
        values = resources.get(section, {}) or {}
        p.check("cpu" in values and "memory" in values,
                f"{where}: resources.{section} needs cpu and memory")


def check_data_seeding(p, objects):
    """The data design, on manifests or rendered output (OBJECTS: (kind,
    name) -> document): one Job seeds pnn-data, as uid 10001 after a root
    step with CAP_CHOWN only, without fsGroup; the Deployments that read it
    mount it read-only (the claim itself readOnly, so no fsGroup is applied
    to it), seed nothing and wait for the data set in an init container.
    Returns (the prepare-volume container, one wait-for-data container),
    either None where missing."""
    prepare = wait = None
    job = objects.get(("Job", "pnn-seed-data"))
    if p.check(job is not None, "no Job pnn-seed-data"):
        where = "Job/pnn-seed-data"
        labels = job["metadata"].get("labels", {})
        p.check(labels.get("app.kubernetes.io/name") == "pnn-seed-data" and
                labels.get("app.kubernetes.io/part-of") == "pnn",
                f"{where}: labels app.kubernetes.io/name and part-of expected")
        spec = job.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        pod_security = pod.get("securityContext", {}) or {}
        p.check("fsGroup" not in pod_security,
                f"{where}: no fsGroup: seeding must not depend on it (NFS, EFS and "
                "CephFS volumes often ignore it)")
        p.check(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                f"{where}: seccompProfile RuntimeDefault expected")
        p.check(pod.get("restartPolicy") == "Never",
                f"{where}: restartPolicy Never (one pod, one log per attempt; "
                "podFailurePolicy needs it)")
        data = data_volume_names(pod)
        p.check(len(data) == 1, f"{where}: exactly one volume of PVC pnn-data expected")
        for v in pod.get("volumes", []) or []:
            if v["name"] in data:
                p.check(not v["persistentVolumeClaim"].get("readOnly"),
                        f"{where}: the seeder needs pnn-data writable")
        inits = pod.get("initContainers", []) or []
        containers = pod.get("containers", []) or []
        p.check([c.get("name") for c in inits] == ["prepare-volume"],
                f"{where}: one init container, prepare-volume, expected")
        seeders = [c for c in containers
                   if c.get("command") == ["pnn-seed-data", "/data"]]
        if p.check(len(containers) == 1 and len(seeders) == 1,
                   f"{where}: one container running [pnn-seed-data, /data] expected"):
            seeder = seeders[0]
            w = f"{where}: container {seeder.get('name')}"
            security = seeder.get("securityContext", {}) or {}
            p.check(security.get("runAsUser") == SEED_UID and
                    security.get("runAsGroup") == SEED_UID and
                    security.get("runAsNonRoot") is True,
                    f"{w}: runAsUser/runAsGroup {SEED_UID}, runAsNonRoot expected")
            check_hardened(p, w, seeder)
            p.check(any(m["name"] in data and m["mountPath"] == "/data" and
                        not m.get("readOnly") for m in seeder.get("volumeMounts", [])),
                    f"{w}: pnn-data mounted writable at /data expected")
        for c in inits:
            if c.get("name") != "prepare-volume":
                continue
            prepare = c
            w = f"{where}: init container prepare-volume"
            security = c.get("securityContext", {}) or {}
            p.check(security.get("runAsUser") == 0 and
                    security.get("runAsNonRoot") is not True,
                    f"{w}: runs as root (runAsUser 0) to chown /data")
            check_hardened(p, w, c, run_as_root=True)
            command = c.get("command", [])
            p.check(len(command) == 7 and command[:2] == ["sh", "-c"] and
                    command[4:] == ["/data", str(SEED_UID), str(SEED_UID)],
                    f"{w}: command [sh, -c, SCRIPT, NAME, /data, {SEED_UID}, "
                    f"{SEED_UID}] expected, not {command}")
            p.check(any(m["name"] in data and m["mountPath"] == "/data" and
                        not m.get("readOnly") for m in c.get("volumeMounts", [])),
                    f"{w}: pnn-data mounted writable at /data expected")
        rules = (spec.get("podFailurePolicy", {}) or {}).get("rules", []) or []
        p.check(any(r.get("action") == "FailJob" and
                    r.get("onExitCodes", {}).get("containerName") == "prepare-volume" and
                    r["onExitCodes"].get("operator") == "In" and
                    PREPARE_VOLUME_GIVES_UP in r["onExitCodes"].get("values", [])
                    for r in rules),
                f"{where}: podFailurePolicy FailJob on prepare-volume's exit "
                f"{PREPARE_VOLUME_GIVES_UP} expected (retrying cannot help)")

    readers = {name for (kind, name), doc in objects.items() if kind == "Deployment" and
               data_volume_names(doc["spec"]["template"]["spec"])}
    p.check(set(DATA_READERS) <= readers,
            f"Deployments {sorted(set(DATA_READERS) - readers)} do not mount pnn-data")
    scripts = {}
    for dname in sorted(readers):
        where = f"Deployment/{dname}"
        template = objects[("Deployment", dname)]["spec"]["template"]
        pod = template["spec"]
        data = data_volume_names(pod)
        for v in pod.get("volumes", []) or []:
            if v["name"] in data:
                p.check(v["persistentVolumeClaim"].get("readOnly") is True,
                        f"{where}: volume {v['name']}: persistentVolumeClaim.readOnly: "
                        "true expected (only Job pnn-seed-data writes pnn-data; the "
                        "kubelet applies no fsGroup to a read-only claim)")
        main_images = {c.get("image") for c in pod.get("containers", [])}
        for section, c in pod_containers(pod):
            w = f"{where}: {section[:-1]} {c.get('name')}"
            words = [str(x) for x in
                     (c.get("command", []) or []) + (c.get("args", []) or [])]
            p.check(not any(SEEDER_CALL.search(x) for x in words),
                    f"{w}: runs pnn-seed-data; only Job pnn-seed-data seeds")
            for m in c.get("volumeMounts", []) or []:
                if m["name"] in data:
                    p.check(m.get("readOnly") is True,
                            f"{w}: mount {m['mountPath']} of pnn-data must be readOnly")
        waits = [c for c in pod.get("initContainers", []) or []
                 if c.get("name") == "wait-for-data"]
        if not p.check(len(waits) == 1, f"{where}: init container wait-for-data expected"):
            continue
        c = waits[0]
        w = f"{where}: init container wait-for-data"
        command = c.get("command", [])
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", []) or []
                  if m["name"] in data}
        if p.check(len(command) == 5 and command[:2] == ["sh", "-c"],
                   f"{w}: command [sh, -c, SCRIPT, NAME, PATH] expected"):
            path = command[4]
            p.check(os.path.dirname(path) in mounts and
                    os.path.basename(path) == SEEDED_DATA_SET,
                    f"{w}: waits for {path}, expected {SEEDED_DATA_SET} in its "
                    f"pnn-data mount {sorted(mounts)}")
            scripts[dname] = command[2]
            wait = wait or c
        p.check(mounts and all(m.get("readOnly") is True for m in mounts.values()),
                f"{w}: pnn-data mounted readOnly expected")
        p.check(c.get("image") in main_images,
                f"{w}: image {c.get('image')}: use the pod's own image "
                f"{sorted(main_images)} (nothing more to pull)")
        env = {e["name"]: e for e in c.get("env", []) or []}
        p.check(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {})
                .get("fieldPath") == "metadata.namespace",
                f"{w}: env POD_NAMESPACE from metadata.namespace expected (its "
                "message names the namespace)")
        check_hardened(p, w, c)
        security = pod.get("securityContext", {}) or {}
        p.check(security.get("runAsNonRoot") is True and
                security.get("runAsUser") == SEED_UID,
                f"{where}: pod runs as uid {SEED_UID}, runAsNonRoot")
    p.check(len(set(scripts.values())) <= 1,
            f"wait-for-data scripts differ between {sorted(scripts)}")
    return prepare, wait


def run_prepare_volume(p, container, tmp):
    """Runs prepare-volume's script on directories (in TMP) like a fresh
    volume's root, with chown behind a recording stand-in (that can fail
    like NFS root_squash). As root also with the real chown; returns the
    directory it prepared like a fresh block-storage volume then."""
    command = container["command"]
    real_chown = shutil.which("chown")
    os.chmod(tmp, 0o755)  # uid 10001 has to reach the volumes below
    bin_dir = os.path.join(tmp, "bin")
    os.mkdir(bin_dir)
    log = os.path.join(tmp, "chown.log")
    with open(os.path.join(bin_dir, "chown"), "w") as f:
        f.write("#!/bin/sh\n"
                f"echo \"$*\" >> {shlex.quote(log)}\n"
                "if [ -n \"${CHOWN_FAILS:-}\" ]; then\n"
                "  echo \"chown: changing ownership of '$2': Operation not permitted\" >&2\n"
                "  exit 1\n"
                "fi\n"
                f"exec {shlex.quote(real_chown)} \"$@\"\n")
    os.chmod(os.path.join(bin_dir, "chown"), 0o755)
    uid, gid = command[5], command[6]

    def run(directory, chown_fails=False):
        if os.path.exists(log):
            os.remove(log)
        env = dict(os.environ, PATH=bin_dir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        if chown_fails:
            env["CHOWN_FAILS"] = "1"
        result = subprocess.run(command[:4] + [directory] + command[5:], env=env,
                                capture_output=True, text=True, timeout=30)
        calls = []
        if os.path.exists(log):
            with open(log) as f:
                calls = f.read().splitlines()
        return result, calls

    def volume(name, mode, owned_by=None):
        path = os.path.join(tmp, name)
        os.mkdir(path)
        if owned_by:
            os.chown(path, *owned_by)
        os.chmod(path, mode)
        return path

    def owner(path):
        st = os.stat(path)
        return st.st_uid, st.st_gid

    # World-writable (e.g. nfs-subdir-external-provisioner's 0777).
    d = volume("open", 0o777)
    result, calls = run(d)
    p.check(result.returncode == 0 and not calls,
            f"prepare-volume on a 0777 root: exit {result.returncode}, chown "
            f"calls {calls}; expected 0 and none\n{result.stdout}{result.stderr}")
    # Not writable and root may not chown (NFS root_squash).
    d = volume("squashed", 0o755)
    result, calls = run(d, chown_fails=True)
    text = result.stderr
    p.check(result.returncode == PREPARE_VOLUME_GIVES_UP,
            f"prepare-volume where chown fails: exit {result.returncode}, expected "
            f"{PREPARE_VOLUME_GIVES_UP} (podFailurePolicy)\n{result.stdout}{text}")
    p.check(calls == [f"{uid}:{gid} {d}"],
            f"prepare-volume where chown fails: chown calls {calls}, expected "
            f"['{uid}:{gid} {d}']")
    for needle in ("Operation not permitted", f"chown {uid}:{gid} the exported",
                   f"anonuid={uid},anongid={gid}", f'uid: "{uid}", gid: "{gid}"',
                   "kubectl -n pnn delete job pnn-seed-data"):
        p.check(needle in text, f"prepare-volume's message when chown fails "
                f"lacks {needle!r}:\n{text}")
    if os.geteuid() != 0:
        print("note: not root; prepare-volume's chown and the seeding as uid "
              f"{uid} were not run for real")
        return
    seed_uid, seed_gid = int(uid), int(gid)
    # Owned by the seeder already: nothing to do.
    d = volume("owned", 0o755, (seed_uid, seed_gid))
    result, calls = run(d)
    p.check(result.returncode == 0 and not calls,
            f"prepare-volume on a root owned by {uid}: exit {result.returncode}, "
            f"chown calls {calls}\n{result.stdout}{result.stderr}")
    # Group-writable for the seeder's group: enough.
    d = volume("group", 0o775, (0, seed_gid))
    result, calls = run(d)
    p.check(result.returncode == 0 and not calls,
            f"prepare-volume on root:{gid} 0775: exit {result.returncode}, chown "
            f"calls {calls}\n{result.stdout}{result.stderr}")
    # The group class applies before others: root:GID 0757 is not writable.
    d = volume("group-ro", 0o757, (0, seed_gid))
    result, calls = run(d)
    p.check(result.returncode == 0 and calls == [f"{uid}:{gid} {d}"] and
            owner(d) == (seed_uid, seed_gid),
            f"prepare-volume on root:{gid} 0757 (not writable for group {gid}): "
            f"exit {result.returncode}, chown calls {calls}, owner {owner(d)}")
    # chown works, but the mode keeps the owner out.
    d = volume("read-only", 0o555)
    result, calls = run(d)
    p.check(result.returncode == PREPARE_VOLUME_GIVES_UP and "done, but" in result.stderr,
            f"prepare-volume on a 0555 root: exit {result.returncode}, expected "
            f"{PREPARE_VOLUME_GIVES_UP} with 'done, but ...'\n{result.stderr}")
    # A fresh block-storage root (root 0755): chowned, then the seeder as
    # uid 10001 copies a data set that another uid, with no shared group,
    # can read, and wait-for-data returns.
    d = volume("fresh", 0o755, (0, 0))
    result, calls = run(d)
    p.check(result.returncode == 0 and calls == [f"{uid}:{gid} {d}"] and
            owner(d) == (seed_uid, seed_gid),
            f"prepare-volume on a fresh root: exit {result.returncode}, chown calls "
            f"{calls}, owner {owner(d)}\n{result.stdout}{result.stderr}")
    return d


def run_seed_and_read(p, repo, volume_dir, wait_container):
    """As root: pnn-seed-data as uid 10001 (umask 022, the container
    runtimes' default) into VOLUME_DIR, then a reader of uid 10002 without
    any shared group runs wait-for-data and reads every file."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        print("note: setpriv missing; the seeding as uid 10001 was not run")
        return
    with tempfile.TemporaryDirectory(prefix="k8s-source-") as src:
        os.chmod(src, 0o755)
        os.mkdir(os.path.join(src, SEEDED_DATA_SET))
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
            with open(os.path.join(src, SEEDED_DATA_SET, name), "wb") as f:
                f.write(os.urandom(4096))
        for root, dirs, files in os.walk(src):
            for x in dirs:
                os.chmod(os.path.join(root, x), 0o755)
            for x in files:
                os.chmod(os.path.join(root, x), 0o644)
        seed = os.path.join(repo, "deploy/docker/pnn-seed-data")
        result = subprocess.run(
            [setpriv, f"--reuid={SEED_UID}", f"--regid={SEED_UID}", "--clear-groups",
             "sh", "-c", 'umask 022 && exec sh "$0" "$1"', seed, volume_dir],
            env=dict(os.environ, PNN_SEED_SOURCE=src), capture_output=True, text=True,
            timeout=60)
        if not p.check(result.returncode == 0,
                       f"pnn-seed-data as uid {SEED_UID} into the prepared volume: exit "
                       f"{result.returncode}\n{result.stdout}{result.stderr}"):
            return
    reader = [setpriv, "--reuid=10002", "--regid=10002", "--clear-groups"]
    command = list(wait_container["command"])
    command[4] = os.path.join(volume_dir, SEEDED_DATA_SET)
    result = subprocess.run(reader + command, env=dict(os.environ, POD_NAMESPACE="pnn"),
                            capture_output=True, text=True, timeout=30)
    p.check(result.returncode == 0 and "is there" in result.stdout,
            f"wait-for-data after seeding: exit {result.returncode}\n{result.stdout}"
            f"{result.stderr}")
    for root, _, files in os.walk(volume_dir):
        for name in files:
            path = os.path.join(root, name)
            result = subprocess.run(reader + ["cat", path], capture_output=True, timeout=30)
            p.check(result.returncode == 0,
                    f"uid 10002 (no group shared with the seeder) cannot read {path}: "
                    f"{result.stderr.decode().strip()}")


def run_wait_for_data(p, container):
    """Runs wait-for-data's script (after Kubernetes' $(VAR) expansion) on a
    path that appears after 6 s: it says every few seconds what it waits
    for and how to look, and returns once the path is there."""
    env = {"POD_NAMESPACE": "pnn"}
    command = [k8s_expand(x, env) for x in container["command"]]
    with tempfile.TemporaryDirectory(prefix="k8s-wait-") as tmp:
        path = os.path.join(tmp, SEEDED_DATA_SET)
        command[4] = path
        out_path = os.path.join(tmp, "out")
        with open(out_path, "w") as out:
            process = subprocess.Popen(command, env=dict(os.environ, **env),
                                       stdout=out, stderr=subprocess.STDOUT)
            try:
                time.sleep(6.5)
                early = process.poll()
                os.mkdir(path)
                code = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        with open(out_path) as f:
            text = f.read()
    lines = [x for x in text.splitlines() if path in x and "is there" not in x]
    p.check(early is None, f"wait-for-data returned ({early}) before {path} existed:\n{text}")
    p.check(code == 0 and text.rstrip().endswith(f"{path} is there"),
            f"wait-for-data: exit {code} once {path} exists, expected 0 and "
            f"'{path} is there':\n{text}")
    p.check(len(lines) >= 2,
            f"wait-for-data: {len(lines)} message(s) in 6.5 s; expected one every "
            f"few seconds:\n{text}")
    for needle in ("kubectl -n pnn logs job/pnn-seed-data --all-containers",
                   "kubectl -n pnn describe job pnn-seed-data"):
        p.check(all(needle in x for x in lines),
                f"wait-for-data's message lacks {needle!r}:\n{text}")


def kustomize_images(kustomization):
    return {e.get("name"): f"{e.get('newName', e.get('name'))}:{e.get('newTag')}"
            for e in kustomization.get("images", []) or []}


def check_rendered_images(p, objects, images, where):
    """Every pod's containers and init containers use the kustomize images:
    the GPU worker pnn-cuda's, the other pnn pods pnn's, Prometheus
    prom/prometheus's."""
    for key in ("pnn", "pnn-cuda", "prom/prometheus"):
        if not p.check(key in images, f"{where}: kustomization images lack {key}"):
            return
    for (kind, name), doc in sorted(objects.items()):
        if kind not in ("Deployment", "Job"):
            continue
        if name == "pnn-worker-gpu":
            expected = images["pnn-cuda"]
        elif name == "pnn-prometheus":
            expected = images["prom/prometheus"]
        else:
            expected = images["pnn"]
        for section, c in pod_containers(doc["spec"]["template"]["spec"]):
            p.check(c.get("image") == expected,
                    f"{where}: {kind}/{name} {section[:-1]} {c.get('name')}: image "
                    f"{c.get('image')}, expected {expected}")


def kubectl_kustomize(p, kubectl, directory, where):
    result = subprocess.run([kubectl, "kustomize", directory], capture_output=True,
                            timeout=120)
    if not p.check(result.returncode == 0,
                   f"kubectl kustomize {where}:\n{result.stderr.decode()}"):
        return None
    objects = {}
    for doc in yaml_module().safe_load_all(result.stdout):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            p.check(key not in objects, f"{where}: {key} rendered twice")
            objects[key] = doc
    return objects


AUTH_FLAGS = ("token_file", "tls_cert", "tls_key", "tls_ca")


def cmd_kustomize(repo, overlay, kubectl=None):
    """`kubectl kustomize deploy/OVERLAY` (k8s or k8s-secure): the seeding
    design, images and namespaces of what would be applied; then the same
    overlay rendered from a copy of deploy/k8s and deploy/k8s-secure alone
    (no generated files) whose deploy/k8s/kustomization.yaml names other
    images: every pod follows."""
    yaml = yaml_module()
    p = Problems()
    kubectl = kubectl or shutil.which("kubectl")
    if not kubectl or not os.access(kubectl, os.X_OK):
        print("SKIP: kubectl not found (any kubectl >= 1.21: `kubectl kustomize` "
              "is built in and works offline)")
        return SKIP
    if overlay not in ("k8s", "k8s-secure"):
        print(f"unknown overlay {overlay}", file=sys.stderr)
        return 2
    where = f"deploy/{overlay}"
    objects = kubectl_kustomize(p, kubectl, os.path.join(repo, "deploy", overlay), where)
    if objects is None:
        return p.report("")
    with open(os.path.join(repo, "deploy/k8s/kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)

    for (kind, name), doc in sorted(objects.items()):
        if kind == "Namespace":
            continue
        p.check(doc["metadata"].get("namespace") == "pnn",
                f"{where}: {kind}/{name} in namespace "
                f"{doc['metadata'].get('namespace')}, expected pnn")
        for subject in doc.get("subjects", []) or []:
            p.check(subject.get("namespace") == "pnn",
                    f"{where}: {kind}/{name}: subject {subject.get('name')} not in pnn")
    p.check(("Namespace", "pnn") in objects, f"{where}: no Namespace pnn")
    p.check(not any(kind == "Secret" for kind, _ in objects),
            f"{where}: renders a Secret; secrets are created outside the kustomization")

    before = len(p)
    check_data_seeding(p, objects)
    if len(p) > before:
        p[before:] = [f"{where}: {x}" for x in p[before:]]
    check_rendered_images(p, objects, kustomize_images(kustomization), where)

    pnn_pods = {name: objects[("Deployment", name)]["spec"]["template"]["spec"]
                for name in DATA_READERS if ("Deployment", name) in objects}
    for name, pod in pnn_pods.items():
        c = pod["containers"][0]
        args = c.get("args", [])
        flags = {flag: last_flag(args, flag) for flag in AUTH_FLAGS}
        secrets = [v for v in pod.get("volumes", []) or []
                   if v.get("secret", {}).get("secretName") == "pnn-auth"]
        if overlay == "k8s":
            p.check(not any(flags.values()) and not secrets,
                    f"{where}: Deployment/{name} has auth flags or Secret pnn-auth: "
                    "authentication is deploy/k8s-secure's")
            continue
        p.check(all(v and v.startswith("/etc/pnn/auth/") for v in flags.values()),
                f"{where}: Deployment/{name}: auth flags {flags}, expected all four "
                "under /etc/pnn/auth")
        p.check(len(secrets) == 1, f"{where}: Deployment/{name}: Secret pnn-auth "
                "volume expected")
        p.check((pod.get("securityContext", {}) or {}).get("fsGroup") == SEED_UID,
                f"{where}: Deployment/{name}: fsGroup {SEED_UID} (the Secret's files "
                "are group-readable)")
    if overlay == "k8s-secure":
        base = kubectl_kustomize(p, kubectl, os.path.join(repo, "deploy/k8s"),
                                 "deploy/k8s")
        if base is not None:
            p.check(base.get(("Job", "pnn-seed-data")) ==
                    objects.get(("Job", "pnn-seed-data")),
                    f"{where}: Job pnn-seed-data differs from deploy/k8s's")
            p.check(set(base) == set(objects),
                    f"{where}: objects differ from deploy/k8s's: "
                    f"{sorted(set(base) ^ set(objects))}")

    # One place: other images in deploy/k8s/kustomization.yaml only.
    with tempfile.TemporaryDirectory(prefix="k8s-kustomize-") as tmp:
        for name in ("k8s", "k8s-secure"):
            shutil.copytree(os.path.join(repo, "deploy", name),
                            os.path.join(tmp, "deploy", name))
        changed = dict(kustomization)
        changed["images"] = [dict(e, newName=f"registry.example.com/team/{e['name']}",
                                  newTag="9.8.7-test")
                             for e in kustomization.get("images", []) or []]
        with open(os.path.join(tmp, "deploy/k8s/kustomization.yaml"), "w") as f:
            yaml.safe_dump(changed, f)
        moved = kubectl_kustomize(p, kubectl, os.path.join(tmp, "deploy", overlay),
                                  f"a copy of {where} with other images")
        if moved is not None:
            check_rendered_images(p, moved, kustomize_images(changed),
                                  f"{where} with images changed in deploy/k8s only")
    jobs = sum(1 for kind, _ in objects if kind == "Job")
    return p.report(f"kubectl kustomize {where}: {len(objects)} objects in namespace "
                    f"pnn, {jobs} seeding Job, {len(pnn_pods)} Deployments waiting "
                    "for read-only data, images set in deploy/k8s/kustomization.yaml")


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
    needed = ["CMakeLists.txt", "examples", "deploy/docker/pnn-seed-data",
              "deploy/docker/pnn-grafana-password"] + \
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
    if len(argv) >= 3 and argv[1] == "compose-secure":
        return cmd_compose_secure(argv[2])
    if len(argv) >= 3 and argv[1] == "k8s-secure":
        return cmd_k8s_secure(argv[2])
    if len(argv) in (4, 5) and argv[1] == "kustomize":
        return cmd_kustomize(argv[2], argv[3], *argv[4:])
    if len(argv) >= 3 and argv[1] == "docker":
        return cmd_docker(argv[2])
    if len(argv) >= 4 and argv[1] == "runtime-libs":
        return cmd_runtime_libs(argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
