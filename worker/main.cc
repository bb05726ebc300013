// pnn-worker: trains segments for a pnn coordinator.
//
//   pnn-worker --coordinator=coord.example:7070
//   pnn-worker --coordinator=127.0.0.1:7070 --listen_host=127.0.0.1 --port=0
//
// Registers with the coordinator, serves pnn.v1.Worker (plus gRPC health
// checking and reflection), and exits 0 after SIGTERM or SIGINT.

#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/registry.h"
#include "rpc/auth.h"
#include "rpc/metrics.h"
#include "rpc/stop_signal.h"
#include "worker/worker_server.h"

ABSL_FLAG(std::string, coordinator, "",
          "Coordinator to register with, HOST:PORT (required).");
ABSL_FLAG(int32_t, port, 0, "Port to listen on (0: pick a free port).");
ABSL_FLAG(std::string, token_file, "",
          "File holding the bearer token shared with the coordinator "
          "(default: $PNN_AUTH_TOKEN; neither: no authentication).");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate to serve TLS with (and to present to the "
          "coordinator).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA of the coordinator's certificate; callers must present a "
          "certificate it signed (mutual TLS).");
ABSL_FLAG(int32_t, metrics_port, 9102,
          "Prometheus /metrics port (0: pick a free port; -1: no metrics).");
ABSL_FLAG(std::string, listen_host, "0.0.0.0",
          "Address to listen on (0.0.0.0: every interface).");
ABSL_FLAG(std::string, advertise_address, "",
          "HOST:PORT the coordinator should dial (default: --listen_host, or "
          "127.0.0.1 when listening on 0.0.0.0, and the bound port).");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets",
          "Data root: a job's dataset.path is read from under it.");
ABSL_FLAG(int32_t, threads, 0,
          "Intra-op threads for training (0: the CPUs this process may use: "
          "its affinity mask, capped by its cgroup's CPU quota, e.g. docker "
          "--cpus or a Kubernetes CPU limit).");
ABSL_FLAG(std::string, device, "cpu", "Training device: cpu, cuda or cuda:N.");
ABSL_FLAG(std::vector<std::string>, preload, {},
          "Data sets (paths under --data_dir, comma-separated) to load before "
          "registering, so jobs do not wait for them (e.g. fashion-mnist).");
ABSL_FLAG(std::string, name, "",
          "Worker name shown to people (default: the host name).");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "pnn-worker: %s\n", message.c_str());
  return 1;
}

bool IsHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  return colon != std::string::npos && colon > 0 &&
         absl::SimpleAtoi(absl::string_view(address).substr(colon + 1),
                          &port) &&
         port > 0 && port <= 65535;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Trains neural network segments for a pnn coordinator.\n"
      "Usage: pnn-worker --coordinator=HOST:PORT [--port=N] "
      "[--listen_host=ADDR] [--data_dir=DIR] [--threads=N] [--device=cpu]");
  absl::ParseCommandLine(argc, argv);

  pnn::worker::WorkerOptions options;
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  if (options.coordinator.empty()) {
    return Fail("--coordinator is required (HOST:PORT of the coordinator)");
  }
  if (!IsHostPort(options.coordinator)) {
    return Fail(absl::StrCat("--coordinator must be HOST:PORT, got \"",
                             options.coordinator, "\""));
  }
  options.port = absl::GetFlag(FLAGS_port);
  options.listen_host = absl::GetFlag(FLAGS_listen_host);
  options.advertise_address = absl::GetFlag(FLAGS_advertise_address);
  if (!options.advertise_address.empty() &&
      !IsHostPort(options.advertise_address)) {
    return Fail(absl::StrCat("--advertise_address must be HOST:PORT, got \"",
                             options.advertise_address, "\""));
  }
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.device = absl::GetFlag(FLAGS_device);
  options.preload_datasets = absl::GetFlag(FLAGS_preload);
  options.name = absl::GetFlag(FLAGS_name);
  auto token = pnn::LoadAuthToken(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return Fail(std::string(token.status().message()));
  options.auth_token = *token;
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port >= 0) {
    options.metrics_registry = std::make_shared<prometheus::Registry>();
  }

  // Before Start, so that a signal during start-up also shuts down cleanly.
  if (!pnn::InstallStopHandlers()) return Fail("cannot install signal handlers");

  pnn::worker::WorkerServer server(options);
  auto port = server.Start();
  if (!port.ok()) return Fail(std::string(port.status().message()));
  std::unique_ptr<pnn::MetricsServer> metrics;
  if (metrics_port >= 0) {
    auto started = pnn::MetricsServer::Start(options.listen_host, metrics_port,
                                             options.metrics_registry);
    if (!started.ok()) return Fail(std::string(started.status().message()));
    metrics = *std::move(started);
    std::fprintf(stderr, "pnn-worker metrics on %s\n",
                 pnn::worker::JoinHostPort(options.listen_host == "0.0.0.0"
                                               ? "127.0.0.1"
                                               : options.listen_host,
                                           metrics->port())
                     .c_str());
  }
  std::fprintf(stderr,
               "pnn-worker listening on %s\n"
               "pnn-worker: %s, device %s, %d threads, data in %s, "
               "advertised as %s to coordinator %s\n",
               server.listen_address().c_str(), server.options().name.c_str(),
               server.options().device.c_str(), server.options().threads,
               server.options().data_dir.c_str(),
               server.advertise_address().c_str(), options.coordinator.c_str());
  std::fflush(stderr);

  const int signal_number = pnn::WaitForStopSignal();
  std::fprintf(stderr, "pnn-worker: %s received, shutting down\n",
               signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stderr);
  server.Shutdown();
  std::fprintf(stderr, "pnn-worker: stopped\n");
  return 0;
}
