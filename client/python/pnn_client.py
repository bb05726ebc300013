#!/usr/bin/python3
"""A second-language check of the pnn wire contract: submit a job and watch
it to the end from Python, with stubs generated from proto/ at run time.

    client/python/pnn_client.py examples/fashion_mnist.json \
        --coordinator localhost:50051 --epochs 1 --baseline

Runs with Debian's /usr/bin/python3 (the shebang), which has
python3-grpcio and python3-protobuf, and either grpc_tools
(pip's grpcio-tools) or protoc with grpc_python_plugin
(protobuf-compiler, protobuf-compiler-grpc). Exit status as pnnctl's: 0 the
job SUCCEEDED, 1 usage or local error, 2 RPC error, 3 FAILED, 4 CANCELLED.

Security flags as pnnctl's: --tls_ca FILE connects with TLS, verifying the
coordinator against that CA (PEM); --tls_cert/--tls_key add a client
certificate; --token_file FILE (default: $PNN_AUTH_TOKEN) sends the bearer
token with every call.
"""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

EXIT_OK, EXIT_USAGE, EXIT_RPC, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 2, 3, 4
DEFAULT_PROTO_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "proto")
MAX_MESSAGE_BYTES = 256 << 20  # rpc/rpc_util.h: kMaxMessageBytes


def fail(message, code):
    print(f"pnn_client: {message}", file=sys.stderr)
    sys.exit(code)


def generate_stubs(proto_dir, out_dir):
    """Compiles proto_dir/pnn/v1/*.proto into Python modules under out_dir.

    grpc_tools bundles its own protoc and plugin; without it, the system
    protoc and grpc_python_plugin do the same job.
    """
    v1 = os.path.join(proto_dir, "pnn", "v1")
    if not os.path.isdir(v1):
        fail(f"no .proto files at {v1}; pass --proto_dir", EXIT_USAGE)
    protos = sorted(os.path.join(v1, name) for name in os.listdir(v1)
                    if name.endswith(".proto"))
    try:
        importlib.import_module("grpc_tools.protoc")
        command = [sys.executable, "-m", "grpc_tools.protoc"]
        plugin = ["--grpc_python_out=" + out_dir]
    except ImportError:
        protoc = shutil.which("protoc")
        plugin_path = shutil.which("grpc_python_plugin")
        if not protoc or not plugin_path:
            fail("cannot generate stubs: install grpcio-tools, or protoc and "
                 "grpc_python_plugin (apt-get install protobuf-compiler "
                 "protobuf-compiler-grpc)", EXIT_USAGE)
        command = [protoc]
        plugin = ["--plugin=protoc-gen-grpc=" + plugin_path,
                  "--grpc_out=" + out_dir]
    result = subprocess.run(
        command + ["-I", proto_dir, "--python_out=" + out_dir] + plugin +
        protos, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"generating stubs failed:\n{result.stderr}", EXIT_USAGE)


def load_request(path, coordinator_pb2):
    from google.protobuf import json_format
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        fail(f"cannot read job file {path}: {e.strerror}", EXIT_USAGE)
    try:
        top = json.loads(text)
    except ValueError as e:
        fail(f"{path}: not JSON ({e})", EXIT_USAGE)
    if not isinstance(top, dict):
        fail(f"{path}: expected a JSON object", EXIT_USAGE)
    # As pnnctl: a top-level "spec" key means a SubmitJobRequest.
    try:
        if "spec" in top:
            return json_format.Parse(text, coordinator_pb2.SubmitJobRequest())
        request = coordinator_pb2.SubmitJobRequest()
        json_format.Parse(text, request.spec)
        return request
    except json_format.ParseError as e:
        fail(f"{path}: {e}", EXIT_USAGE)


AUTH_TOKEN_ENVIRONMENT = "PNN_AUTH_TOKEN"  # rpc/auth.h


def read_file(path, what, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError as e:
        fail(f"cannot read the {what} {path}: {e.strerror}", EXIT_USAGE)


def load_auth_token(token_file):
    """As pnnctl (rpc/auth.cc): the file's token, stripped, or
    $PNN_AUTH_TOKEN when no file is given; "" means no authentication."""
    if not token_file:
        return os.environ.get(AUTH_TOKEN_ENVIRONMENT, "").strip()
    token = read_file(token_file, "token file").strip()
    if not token:
        fail(f"the token file {token_file} is empty", EXIT_USAGE)
    return token


def channel_credentials(args, grpc):
    """None for plaintext; TLS credentials as pnnctl's rpc/tls.cc."""
    if not args.tls_ca and not args.tls_cert:
        if args.tls_key:
            fail("--tls_key needs --tls_cert", EXIT_USAGE)
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        fail("--tls_cert and --tls_key go together", EXIT_USAGE)
    ca = read_file(args.tls_ca, "CA", "rb") if args.tls_ca else None
    cert = read_file(args.tls_cert, "certificate", "rb") if args.tls_cert else None
    key = read_file(args.tls_key, "key", "rb") if args.tls_key else None
    return grpc.ssl_channel_credentials(root_certificates=ca,
                                        private_key=key,
                                        certificate_chain=cert)


def describe_rpc_error(error, target):
    import grpc
    code = error.code()
    detail = f"{code.name}: {error.details()}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (f"{detail}; give the coordinator's token with --token_file "
                f"or {AUTH_TOKEN_ENVIRONMENT}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return (f"cannot reach coordinator at {target} ({detail}); is "
                "pnn-coordinator running? set --coordinator or "
                "PNN_COORDINATOR")
    return detail


def apply_overrides(args, request):
    if args.epochs is not None:
        request.spec.training.epochs = args.epochs
        for segment in request.spec.segment_training:
            segment.epochs = 0
    if args.train_limit is not None:
        request.spec.dataset.train_limit = args.train_limit
    if args.baseline:
        request.conventional_baseline = True


def parse_args():
    parser = argparse.ArgumentParser(
        description="Submit a pnn job and watch it to the end.")
    parser.add_argument("job", help="protobuf JSON of pnn.v1.JobSpec or "
                        "pnn.v1.SubmitJobRequest")
    parser.add_argument("--coordinator",
                        default=os.environ.get("PNN_COORDINATOR") or
                        "localhost:50051")
    parser.add_argument("--proto_dir", default=os.path.normpath(
        DEFAULT_PROTO_DIR))
    parser.add_argument("--epochs", type=int,
                        help="override training.epochs")
    parser.add_argument("--train_limit", type=int,
                        help="override dataset.train_limit")
    parser.add_argument("--baseline", action="store_true",
                        help="also train the conventional baseline")
    parser.add_argument("--timeout", type=float, default=30,
                        help="seconds for SubmitJob")
    parser.add_argument("--tls_ca", help="connect with TLS, verifying the "
                        "coordinator against this CA (PEM)")
    parser.add_argument("--tls_cert", help="client certificate (PEM), "
                        "optional")
    parser.add_argument("--tls_key", help="private key of --tls_cert")
    parser.add_argument("--token_file", help="file holding the coordinator's "
                        f"bearer token (default: ${AUTH_TOKEN_ENVIRONMENT})")
    return parser.parse_args()


def open_channel(args, grpc):
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    credentials = channel_credentials(args, grpc)
    if credentials is None:
        return grpc.insecure_channel(args.coordinator, options=options)
    return grpc.secure_channel(args.coordinator, credentials, options=options)


def main():
    args = parse_args()
    token = load_auth_token(args.token_file)

    try:
        import grpc
    except ImportError:
        fail(f"no grpc module in {sys.executable}: install python3-grpcio "
             "and python3-protobuf (Debian) and run this with "
             "/usr/bin/python3", EXIT_USAGE)

    with tempfile.TemporaryDirectory(prefix="pnn_stubs_") as stubs:
        generate_stubs(args.proto_dir, stubs)
        sys.path.insert(0, stubs)
        coordinator_pb2 = importlib.import_module("pnn.v1.coordinator_pb2")
        coordinator_grpc = importlib.import_module(
            "pnn.v1.coordinator_pb2_grpc")

    request = load_request(args.job, coordinator_pb2)
    apply_overrides(args, request)

    channel = open_channel(args, grpc)
    metadata = [("authorization", "Bearer " + token)] if token else None
    stub = coordinator_grpc.CoordinatorStub(channel)
    state_name = coordinator_pb2.JobState.Name
    try:
        response = stub.SubmitJob(request, timeout=args.timeout,
                                  metadata=metadata)
        job_id = response.job_id
        print(f"submitted {job_id}", flush=True)
        job = response.job
        for event in stub.WatchJob(
                coordinator_pb2.WatchJobRequest(job_id=job_id),
                metadata=metadata):
            job = event.job
            progress = ", ".join(
                f"segment {t.segment_index + 1} {100 * t.progress:.0f}%"
                for t in job.segments)
            print(f"{state_name(job.state)} {progress}: {event.message}",
                  flush=True)
            if job.state in (coordinator_pb2.JOB_STATE_SUCCEEDED,
                             coordinator_pb2.JOB_STATE_FAILED,
                             coordinator_pb2.JOB_STATE_CANCELLED):
                break
    except grpc.RpcError as error:
        fail(describe_rpc_error(error, args.coordinator), EXIT_RPC)
    finally:
        channel.close()

    print(f"job {job.job_id}: {state_name(job.state)}"
          + (f" ({job.message})" if job.message else ""))
    if job.HasField("test"):
        print(f"test accuracy {100 * job.test.accuracy:.2f}% "
              f"(joined before recovery {100 * job.joined_test_accuracy:.2f}%)")
    if job.HasField("baseline_test"):
        print(f"baseline accuracy {100 * job.baseline_test.accuracy:.2f}%")
    return {coordinator_pb2.JOB_STATE_SUCCEEDED: EXIT_OK,
            coordinator_pb2.JOB_STATE_FAILED: EXIT_FAILED,
            coordinator_pb2.JOB_STATE_CANCELLED: EXIT_CANCELLED}.get(
                job.state, EXIT_RPC)


if __name__ == "__main__":
    sys.exit(main())
