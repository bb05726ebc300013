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
#include "common/job_spec.h"
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

// The syntax ResolveDevice accepts; whether CUDA exists is left to training
// time, so a misconfigured worker still registers and reports why it fails.

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
  if (options_.listen_host.empty()) {
    return absl::InvalidArgumentError("listen_host must not be empty");
  }
  if (options_.port < 0 || options_.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "port must be in [0, 65535] (0: any free port), got ", options_.port));
  }
  if (!IsValidDeviceName(options_.device)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"",
                     options_.device, "\""));
  }
  if (options_.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "threads must be >= 0 (0: one per core), got ", options_.threads));
  }
  if (options_.batch_report_interval < 1 || options_.max_cached_datasets < 1) {
    return absl::InvalidArgumentError(
        "batch_report_interval and max_cached_datasets must be >= 1");
  }
  if (options_.data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir must not be empty");
  }
  if (options_.name.empty()) options_.name = HostName();
  if (options_.threads == 0) {
    options_.threads =
        std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }

  SegmentRunnerOptions runner_options;
  runner_options.data_dir = options_.data_dir;
  runner_options.device = options_.device;
  runner_options.threads = options_.threads;
  runner_options.worker_name = options_.name;
  runner_options.batch_report_interval = options_.batch_report_interval;
  runner_options.max_cached_datasets = options_.max_cached_datasets;
  if (options_.metrics_registry != nullptr && metrics_ == nullptr) {
    metrics_ = std::make_unique<WorkerMetrics>(*options_.metrics_registry);
  }
  runner_options.metrics = metrics_.get();
  runner_options.downstream_retry_ms = options_.downstream_retry_ms;
  runner_options.stage_idle_timeout_ms = options_.stage_idle_timeout_ms;
  {
    // Pipeline stages call the next stage's worker with the same token and
    // TLS identity this worker shows the coordinator.
    auto channel_credentials = MakeChannelCredentials(
        {options_.tls_cert, options_.tls_key, options_.tls_ca});
    if (!channel_credentials.ok()) return channel_credentials.status();
    StageClientOptions stage_client;
    stage_client.auth_token = options_.auth_token;
    stage_client.credentials = *channel_credentials;
    runner_options.connect_downstream =
        [stage_client](const std::string& address) {
          return ConnectStage(address, stage_client);
        };
  }
  runner_ = std::make_unique<SegmentRunner>(std::move(runner_options));
  for (const std::string& path : options_.preload_datasets) {
    if (absl::Status loaded = runner_->Preload(path); !loaded.ok()) {
      runner_->Shutdown();
      return loaded;
    }
  }
  service_ = std::make_unique<WorkerService>(runner_.get(), metrics_.get(),
                                             options_.auth_token);

  // Both are process-wide switches read when a builder is made.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ConfigureServerBuilder(&builder);
  // gRPC sets SO_REUSEPORT by default, which would let a second process
  // "bind" a port that is in use; a clash must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  const std::string requested =
      JoinHostPort(options_.listen_host, options_.port);
  auto credentials = MakeServerCredentials(
      {options_.tls_cert, options_.tls_key, options_.tls_ca},
      /*require_client_certificate=*/true);
  if (!credentials.ok()) return credentials.status();
  builder.AddListeningPort(requested, *credentials,
                           &port_);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    if (server_ != nullptr) server_->Shutdown();
    server_.reset();
    runner_->Shutdown();
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", requested,
        " (is the port in use, or the host not an address of this machine?)"));
  }
  advertise_address_ = options_.advertise_address;
  if (advertise_address_.empty()) {
    advertise_address_ = JoinHostPort(IsWildcardHost(options_.listen_host)
                                          ? "127.0.0.1"
                                          : options_.listen_host,
                                      port_);
  }

  if (!options_.coordinator.empty()) {
    RegistrationOptions registration;
    registration.coordinator = options_.coordinator;
    registration.worker.set_address(advertise_address_);
    registration.worker.set_device(options_.device);
    registration.worker.set_threads(options_.threads);
    registration.worker.set_name(options_.name);
    SegmentRunner* runner = runner_.get();
    registration.busy = [runner] { return runner->busy(); };
    registration.initial_retry_ms = options_.registration_initial_retry_ms;
    registration.max_retry_ms = options_.registration_max_retry_ms;
    registration.rpc_timeout_ms = options_.coordinator_rpc_timeout_ms;
    registration.auth_token = options_.auth_token;
    registration.tls = {options_.tls_cert, options_.tls_key, options_.tls_ca};
    registration_ =
        std::make_unique<CoordinatorRegistration>(std::move(registration));
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
