// A whole pnn worker in one object: the Worker gRPC service (plus health
// checking and reflection), its training thread, and the registration with
// the coordinator. pnn-worker's main() is a thin wrapper around it, and
// tests start real workers in-process with it:
//
//   pnn::worker::WorkerOptions options;
//   options.listen_host = "127.0.0.1";   // port 0: pick a free port
//   options.coordinator = "127.0.0.1:" + std::to_string(coordinator_port);
//   options.data_dir = data_root;
//   pnn::worker::WorkerServer worker(options);
//   absl::StatusOr<int> port = worker.Start();
//   ...
//   worker.Shutdown();  // also done by the destructor
//
// Thread safety: Start, Shutdown and Wait may be called from any thread;
// the accessors are safe after Start. No libtorch in this header.
#ifndef PNN_WORKER_WORKER_SERVER_H_
#define PNN_WORKER_WORKER_SERVER_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grpc {
class Server;
}  // namespace grpc
namespace prometheus {
class Registry;
}  // namespace prometheus

namespace pnn {
namespace worker {

class CoordinatorRegistration;
class SegmentRunner;
class WorkerService;
struct WorkerMetrics;

struct WorkerOptions {
  // Interface and port to listen on; port 0 picks a free port.
  std::string listen_host = "0.0.0.0";
  int port = 0;
  // host:port the coordinator should dial. Empty: the listen host (or
  // 127.0.0.1 when listening on every interface) and the bound port.
  std::string advertise_address;
  // Coordinator HOST:PORT to register with. Empty: no registration (a
  // standalone worker, for tests that dial it directly).
  std::string coordinator;
  // Data root; a task's dataset.path is resolved under it and must be
  // relative, without "..".
  std::string data_dir = "/usr/share/datasets";
  // Intra-op threads for training; 0: AvailableCpus() (common/cpu_budget.h).
  int threads = 0;
  // "cpu", "cuda" or "cuda:N". CUDA's presence is checked when training.
  std::string device = "cpu";
  // For people; empty: the host name.
  std::string name;
  // Send a progress update every this many batches.
  int64_t batch_report_interval = 50;
  int max_cached_datasets = 2;
  // Data sets (paths under data_dir, whole files, no limits) loaded before
  // the worker registers, so that a job's first task does not wait for
  // them: a warm worker. A path that does not load fails Start.
  std::vector<std::string> preload_datasets;
  // Registration retry backoff while the coordinator is unreachable.
  int registration_initial_retry_ms = 250;
  int registration_max_retry_ms = 10000;
  int coordinator_rpc_timeout_ms = 5000;
  // How long Shutdown waits for open calls to end before cancelling them.
  int shutdown_grace_ms = 5000;
  // Model-parallel pipelines (SegmentRunnerOptions): how long a stage
  // retries a next stage that has not started yet, and how long a later
  // stage waits for a batch before giving up.
  int64_t downstream_retry_ms = 30000;
  int64_t stage_idle_timeout_ms = 60000;
  // Bearer token (rpc/auth.h): sent with RegisterWorker, Heartbeat and
  // StageForward (to the next pipeline stage's worker), and required on
  // every Worker call. Empty: no authentication.
  std::string auth_token;
  // TLS (rpc/tls.h): the worker's certificate and the CA of its peers.
  // With a CA, callers must present a certificate it signed (mutual TLS);
  // the same files secure the channel to the coordinator.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
  // Where the worker's metrics are registered; null: no metrics.
  std::shared_ptr<prometheus::Registry> metrics_registry;
};

class WorkerServer {
 public:
  explicit WorkerServer(WorkerOptions options);
  ~WorkerServer();  // Shutdown()
  WorkerServer(const WorkerServer&) = delete;
  WorkerServer& operator=(const WorkerServer&) = delete;

  // Validates the options, starts the training thread and the server, then
  // (when a coordinator is set) registration in the background. Returns
  // the bound port. INVALID_ARGUMENT for bad options, UNAVAILABLE when the
  // port cannot be bound, FAILED_PRECONDITION when called twice.
  absl::StatusOr<int> Start();

  // Stops accepting calls and heartbeats, cancels the running segment (its
  // stream ends CANCELLED), waits up to shutdown_grace_ms for open calls,
  // and joins every thread. Idempotent; safe before Start.
  void Shutdown();

  // Blocks until Shutdown() has been called (from another thread).
  void Wait();

  int port() const;                    // bound port, after Start
  std::string listen_address() const;  // listen_host:port
  std::string advertise_address() const;
  // Options with the defaults filled in (name, threads), after Start.
  const WorkerOptions& options() const { return options_; }
  bool busy() const;  // training or about to
  // The coordinator's id for this worker; empty while unregistered.
  std::string worker_id() const;

 private:
  WorkerOptions options_;
  mutable std::mutex mutex_;
  bool started_ = false;        // guarded by mutex_
  bool shutting_down_ = false;  // guarded by mutex_
  bool shut_down_ = false;      // guarded by mutex_
  std::condition_variable shut_down_cv_;
  int port_ = 0;
  std::string advertise_address_;
  std::unique_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<SegmentRunner> runner_;
  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<CoordinatorRegistration> registration_;
};

// "host:port", bracketing IPv6 literals.
std::string JoinHostPort(const std::string& host, int port);

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_WORKER_SERVER_H_
