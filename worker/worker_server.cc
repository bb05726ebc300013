#include "worker/worker_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/cpu_budget.h"
#include "common/job_spec.h"
#include "common/trainer.h"
#include "rpc/rpc_util.h"
#include "rpc/tls.h"
#include "worker/log.h"
#include "worker/metrics.h"
#include "worker/registration.h"
#include "worker/segment_runner.h"
#include "worker/stage_client.h"
#include "worker/worker_service.h"

namespace pnn {
namespace worker {
namespace {

bool IsWildcardHost(const std::string& host) {
  return host == "0.0.0.0" || host == "::" || host == "[::]";
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') {
    return "pnn-worker";
  }
  return name;
}

// The options Start checks before it starts anything.
absl::Status ValidateOptions(const WorkerOptions& options) {
  if (options.listen_host.empty()) {
    return absl::InvalidArgumentError("listen_host must not be empty");
  }
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "port must be in [0, 65535] (0: any free port), got ", options.port));
  }
  if (!IsValidDeviceName(options.device)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"",
                     options.device, "\""));
  }
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "threads must be >= 0 (0: one per core), got ", options.threads));
  }
  if (options.batch_report_interval < 1 || options.max_cached_datasets < 1) {
    return absl::InvalidArgumentError(
        "batch_report_interval and max_cached_datasets must be >= 1");
  }
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir must not be empty");
  }
  return absl::OkStatus();
}

// The training thread's options. Pipeline stages call the next stage's
// worker with the same token and TLS identity this worker shows the
// coordinator.
absl::StatusOr<SegmentRunnerOptions> MakeRunnerOptions(
    const WorkerOptions& options, WorkerMetrics* metrics) {
  SegmentRunnerOptions runner_options;
  runner_options.data_dir = options.data_dir;
  runner_options.device = options.device;
  runner_options.threads = options.threads;
  runner_options.worker_name = options.name;
  runner_options.batch_report_interval = options.batch_report_interval;
  runner_options.max_cached_datasets = options.max_cached_datasets;
  runner_options.metrics = metrics;
  runner_options.downstream_retry_ms = options.downstream_retry_ms;
  runner_options.stage_idle_timeout_ms = options.stage_idle_timeout_ms;
  auto channel_credentials = MakeChannelCredentials(
      {options.tls_cert, options.tls_key, options.tls_ca});
  if (!channel_credentials.ok()) return channel_credentials.status();
  StageClientOptions stage_client;
  stage_client.auth_token = options.auth_token;
  stage_client.credentials = *channel_credentials;
  runner_options.connect_downstream =
      [stage_client](const std::string& address) {
        return ConnectStage(address, stage_client);
      };
  return runner_options;
}

// Builds and starts the gRPC server for `service` on the options' host and
// port; *port is the port bound (0 when none was).
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const WorkerOptions& options,
    const std::shared_ptr<grpc::ServerCredentials>& credentials,
    WorkerService* service, int* port) {
  // Both are process-wide switches read when a builder is made.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ConfigureServerBuilder(&builder);
  // gRPC sets SO_REUSEPORT by default, which would let a second process
  // "bind" a port that is in use; a clash must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  const std::string requested = JoinHostPort(options.listen_host, options.port);
  builder.AddListeningPort(requested, credentials, port);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) {
    if (server != nullptr) server->Shutdown();
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", requested,
        " (is the port in use, or the host not an address of this machine?)"));
  }
  // Health checks may name the service, not only the whole server ("").
  server->GetHealthCheckService()->SetServingStatus(
      pnn::v1::Worker::service_full_name(), true);
  return server;
}

// Registration with the coordinator at options.coordinator, advertising
// `address`; not started yet.
std::unique_ptr<CoordinatorRegistration> MakeRegistration(
    const WorkerOptions& options, const std::string& address,
    SegmentRunner* runner) {
  RegistrationOptions registration;
  registration.coordinator = options.coordinator;
  registration.worker.set_address(address);
  registration.worker.set_device(options.device);
  registration.worker.set_threads(options.threads);
  registration.worker.set_name(options.name);
  registration.busy = [runner] { return runner->busy(); };
  registration.initial_retry_ms = options.registration_initial_retry_ms;
  registration.max_retry_ms = options.registration_max_retry_ms;
  registration.rpc_timeout_ms = options.coordinator_rpc_timeout_ms;
  registration.auth_token = options.auth_token;
  registration.tls = {options.tls_cert, options.tls_key, options.tls_ca};
  return std::make_unique<CoordinatorRegistration>(std::move(registration));
}

}  // namespace

std::string JoinHostPort(const std::string& host, int port) {
  if (absl::StrContains(host, ':') && !absl::StartsWith(host, "[")) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

WorkerServer::WorkerServer(WorkerOptions options)
    : options_(std::move(options)) {}

WorkerServer::~WorkerServer() { Shutdown(); }

absl::StatusOr<int> WorkerServer::Start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (started_ || shutting_down_) {
    return absl::FailedPreconditionError(
        "WorkerServer::Start may be called once, before Shutdown");
  }
  if (absl::Status valid = ValidateOptions(options_); !valid.ok()) {
    return valid;
  }
  // A worker that cannot train on its device refuses to start, rather than
  // register and fail every task it is handed (CUDA asked of a CPU-only
  // libtorch or machine).
  if (auto device = ResolveDevice(options_.device); !device.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device ", options_.device, ": ",
                     device.status().message()));
  }
  if (options_.name.empty()) options_.name = HostName();
  options_.threads = ResolveThreadCount(options_.threads);
  if (options_.metrics_registry != nullptr && metrics_ == nullptr) {
    metrics_ = std::make_unique<WorkerMetrics>(*options_.metrics_registry);
  }
  auto runner_options = MakeRunnerOptions(options_, metrics_.get());
  if (!runner_options.ok()) return runner_options.status();
  runner_ = std::make_unique<SegmentRunner>(*std::move(runner_options));
  for (const std::string& path : options_.preload_datasets) {
    if (absl::Status loaded = runner_->Preload(path); !loaded.ok()) {
      runner_->Shutdown();
      return loaded;
    }
  }
  service_ = std::make_unique<WorkerService>(runner_.get(), metrics_.get(),
                                             options_.auth_token);
  auto credentials = MakeServerCredentials(
      {options_.tls_cert, options_.tls_key, options_.tls_ca},
      /*require_client_certificate=*/true);
  if (!credentials.ok()) return credentials.status();
  auto server =
      StartGrpcServer(options_, *credentials, service_.get(), &port_);
  if (!server.ok()) {
    runner_->Shutdown();
    return server.status();
  }
  server_ = *std::move(server);
  advertise_address_ = options_.advertise_address;
  if (advertise_address_.empty()) {
    advertise_address_ = JoinHostPort(IsWildcardHost(options_.listen_host)
                                          ? "127.0.0.1"
                                          : options_.listen_host,
                                      port_);
  }
  if (!options_.coordinator.empty()) {
    registration_ =
        MakeRegistration(options_, advertise_address_, runner_.get());
    registration_->Start();
  }
  started_ = true;
  return port_;
}

void WorkerServer::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutting_down_) return;
    shutting_down_ = true;
    if (!started_) {
      shut_down_ = true;
      shut_down_cv_.notify_all();
      return;
    }
  }
  // Heartbeats first, so the coordinator stops counting on this worker;
  // then stop training so that the open TrainSegment stream can end with
  // CANCELLED within the grace period instead of being cut off.
  if (registration_) registration_->Stop();
  runner_->RequestStop();
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(options_.shutdown_grace_ms));
  runner_->Shutdown();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    shut_down_ = true;
  }
  shut_down_cv_.notify_all();
}

void WorkerServer::Wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  shut_down_cv_.wait(lock, [this] { return shut_down_; });
}

int WorkerServer::port() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return port_;
}

std::string WorkerServer::listen_address() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return JoinHostPort(options_.listen_host, port_);
}

std::string WorkerServer::advertise_address() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return advertise_address_;
}

bool WorkerServer::busy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return runner_ != nullptr && runner_->busy();
}

std::string WorkerServer::worker_id() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return registration_ ? registration_->worker_id() : std::string();
}

}  // namespace worker
}  // namespace pnn
