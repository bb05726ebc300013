// pnn-coordinator: accepts training jobs over gRPC and trains their
// segments on registered pnn-worker processes.
//
//   pnn-coordinator --port 50051 --state_dir /var/lib/pnn --data_dir /data
#include <signal.h>

#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "common/cpu_budget.h"
#include "coordinator/service.h"
#include "prometheus/registry.h"
#include "rpc/auth.h"
#include "rpc/metrics.h"
#include "rpc/stop_signal.h"

ABSL_FLAG(int32_t, port, 50051, "gRPC port (0: pick a free port).");
ABSL_FLAG(std::string, token_file, "",
          "File holding the bearer token that clients and workers must send "
          "(default: $PNN_AUTH_TOKEN; neither: no authentication).");
ABSL_FLAG(std::string, worker_token_file, "",
          "File holding the workers' own token (default: $PNN_WORKER_TOKEN); "
          "unset: workers use the client token.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate to serve TLS with (and to present to workers).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA that signed the workers' certificates (mutual TLS).");
ABSL_FLAG(int32_t, metrics_port, 9101,
          "Prometheus /metrics port (0: pick a free port; -1: no metrics).");
ABSL_FLAG(std::string, listen_host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(std::string, state_dir, "pnn-state",
          "Directory for model artifacts (created if missing).");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets",
          "Root of the data sets that jobs name by dataset.path.");
ABSL_FLAG(int32_t, threads, 0,
          "Intra-op threads for assembly and the test pass (0: the CPUs this "
          "process may use, its cgroup's CPU quota included).");
ABSL_FLAG(std::string, device, "cpu",
          "Where the coordinator joins and tests models: cpu, cuda or cuda:N "
          "(a job's device only chooses its workers).");
ABSL_FLAG(int32_t, heartbeat_interval_ms, 1000,
          "How often workers are asked to send a heartbeat.");
ABSL_FLAG(int32_t, worker_timeout_ms, 5000,
          "A worker silent this long is lost; its segment is retried.");
ABSL_FLAG(int32_t, max_attempts, 3, "Attempts per segment before a job fails.");
ABSL_FLAG(int32_t, max_active_jobs, 64, "Unfinished jobs accepted at once.");
ABSL_FLAG(int32_t, keep_finished_jobs, 0,
          "Finished jobs kept with their models; older ones are deleted "
          "(0: keep all).");

namespace {

// The server's options from the flags; false (after saying why on stderr)
// when a flag is unusable.
bool OptionsFromFlags(pnn::CoordinatorServer::Options& options) {
  options.listen_host = absl::GetFlag(FLAGS_listen_host);
  options.port = absl::GetFlag(FLAGS_port);
  auto& core = options.coordinator;
  core.state_dir = absl::GetFlag(FLAGS_state_dir);
  core.data_dir = absl::GetFlag(FLAGS_data_dir);
  core.threads = pnn::ResolveThreadCount(absl::GetFlag(FLAGS_threads));
  core.device = absl::GetFlag(FLAGS_device);
  core.heartbeat_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_interval_ms));
  core.worker_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_worker_timeout_ms));
  core.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  core.max_active_jobs = absl::GetFlag(FLAGS_max_active_jobs);
  core.keep_finished_jobs = absl::GetFlag(FLAGS_keep_finished_jobs);
  auto token = pnn::LoadAuthToken(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) {
    std::fprintf(stderr, "pnn-coordinator: %s\n",
                 std::string(token.status().message()).c_str());
    return false;
  }
  core.auth_token = *token;
  const std::string worker_token_file = absl::GetFlag(FLAGS_worker_token_file);
  if (!worker_token_file.empty()) {
    auto worker_token = pnn::LoadAuthToken(worker_token_file);
    if (!worker_token.ok()) {
      std::fprintf(stderr, "pnn-coordinator: %s\n",
                   std::string(worker_token.status().message()).c_str());
      return false;
    }
    core.worker_token = *worker_token;
  } else if (const char* env = std::getenv("PNN_WORKER_TOKEN");
             env != nullptr) {
    core.worker_token = env;
  }
  core.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
              absl::GetFlag(FLAGS_tls_ca)};
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port >= 0) {
    core.metrics_registry = std::make_shared<prometheus::Registry>();
  }
  if (core.keep_finished_jobs < 0) {
    std::fprintf(stderr, "pnn-coordinator: --keep_finished_jobs must be >= 0\n");
    return false;
  }
  if (core.max_attempts < 1 || core.heartbeat_interval <= absl::ZeroDuration() ||
      core.worker_timeout <= core.heartbeat_interval) {
    std::fprintf(stderr,
                 "pnn-coordinator: --max_attempts must be >= 1 and "
                 "--worker_timeout_ms greater than --heartbeat_interval_ms\n");
    return false;
  }

  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Coordinator of pnn: takes jobs over gRPC (pnn.v1.Coordinator) and "
      "trains their segments on pnn-worker processes.\n"
      "Usage: pnn-coordinator [--port P] [--state_dir DIR] [--data_dir DIR]");
  absl::ParseCommandLine(argc, argv);
  // Weights arrive and leave in blocks of megabytes, on many threads. With
  // glibc's default (a threshold that rises after each free) they end up in
  // per-thread heaps that are never given back: 400 finished jobs held
  // 687 MB instead of 250 MB (bench/coordinator_load.cc). A fixed threshold
  // keeps large blocks in mmap, returned to the system when freed.
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  if (!pnn::InstallStopHandlers()) {
    std::fprintf(stderr, "pnn-coordinator: cannot install signal handlers\n");
    return 1;
  }

  pnn::CoordinatorServer::Options options;
  if (!OptionsFromFlags(options)) return 1;
  const auto& core = options.coordinator;
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  pnn::CoordinatorServer server(options);
  auto port = server.Start();
  if (!port.ok()) {
    std::fprintf(stderr, "pnn-coordinator: %s\n",
                 std::string(port.status().message()).c_str());
    return 1;
  }
  const std::string shown_host = options.listen_host == "0.0.0.0"
                                     ? "127.0.0.1"
                                     : options.listen_host;
  std::unique_ptr<pnn::MetricsServer> metrics;
  if (metrics_port >= 0) {
    auto started = pnn::MetricsServer::Start(options.listen_host, metrics_port,
                                             core.metrics_registry);
    if (!started.ok()) {
      std::fprintf(stderr, "pnn-coordinator: %s\n",
                   std::string(started.status().message()).c_str());
      return 1;
    }
    metrics = *std::move(started);
    std::fprintf(stderr, "pnn-coordinator metrics on %s:%d\n",
                 shown_host.c_str(), metrics->port());
  }
  std::fprintf(stderr, "pnn-coordinator listening on %s:%d\n",
               shown_host.c_str(), *port);
  std::fflush(stderr);

  const int signal_number = pnn::WaitForStopSignal();
  std::fprintf(stderr, "pnn-coordinator: %s received, shutting down\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  server.Shutdown();
  return 0;
}
