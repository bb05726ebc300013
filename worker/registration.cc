#include "worker/registration.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "worker/log.h"

namespace pnn {
namespace worker {
namespace {

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(
                          static_cast<absl::StatusCode>(status.error_code())),
                      ": ", status.error_message());
}

}  // namespace

CoordinatorRegistration::CoordinatorRegistration(RegistrationOptions options)
    : options_(std::move(options)),
      stub_(pnn::v1::Coordinator::NewStub(MakeChannel(
          options_.coordinator,
          // WorkerServer::Start has read these files already; a failure
          // here cannot happen without one there.
          MakeChannelCredentials(options_.tls)
              .value_or(grpc::InsecureChannelCredentials())))) {}

CoordinatorRegistration::~CoordinatorRegistration() { Stop(); }

void CoordinatorRegistration::Start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { Loop(); });
}

void CoordinatorRegistration::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    if (active_call_ != nullptr) active_call_->TryCancel();
  }
  wake_.notify_all();
  if (!thread_.joinable()) return;
  thread_.join();
  Deregister();
}

void CoordinatorRegistration::Deregister() {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    id.swap(worker_id_);
  }
  if (id.empty()) return;
  // A stopping worker is not a lost one: say so, briefly. If the
  // coordinator cannot be reached it notices the silence as before.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(
                           std::min(options_.rpc_timeout_ms, 2000)));
  AttachAuthToken(options_.auth_token, &context);
  pnn::v1::DeregisterWorkerRequest request;
  request.set_worker_id(id);
  pnn::v1::DeregisterWorkerResponse response;
  const grpc::Status status =
      stub_->DeregisterWorker(&context, request, &response);
  LogLine(status.ok() ? absl::StrCat("deregistered worker ", id,
                                     " from coordinator ",
                                     options_.coordinator)
                      : absl::StrCat("could not deregister worker ", id, " (",
                                     Describe(status), ")"));
}

std::string CoordinatorRegistration::worker_id() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return worker_id_;
}

int CoordinatorRegistration::registrations() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return registrations_;
}

bool CoordinatorRegistration::SleepFor(int64_t ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  return !wake_.wait_for(lock, std::chrono::milliseconds(ms),
                         [this] { return stopping_; });
}

template <typename Call>
grpc::Status CoordinatorRegistration::Invoke(Call&& call) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(options_.rpc_timeout_ms));
  AttachAuthToken(options_.auth_token, &context);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "stopping");
    }
    active_call_ = &context;
  }
  grpc::Status status = call(&context);
  std::lock_guard<std::mutex> lock(mutex_);
  active_call_ = nullptr;
  return status;
}

struct CoordinatorRegistration::LoopState {
  explicit LoopState(const RegistrationOptions& options)
      : jitter(std::random_device{}()),
        retry_ms(options.initial_retry_ms),
        interval_ms(options.default_heartbeat_interval_ms) {}

  std::minstd_rand jitter;
  int64_t retry_ms;
  int64_t interval_ms;
  std::string id;  // empty while unregistered
  bool registered_before = false;
  // Log the first failure of a streak, not every retry.
  bool reported_unreachable = false;
  bool reported_heartbeat_error = false;
};

void CoordinatorRegistration::Loop() {
  LoopState state(options_);
  for (;;) {
    if (state.id.empty()) {
      if (!Register(state)) return;
      if (state.id.empty()) continue;  // retry after the backoff
    }
    if (!Heartbeat(state)) return;
  }
}

bool CoordinatorRegistration::Register(LoopState& state) {
  pnn::v1::RegisterWorkerRequest request;
  *request.mutable_worker() = options_.worker;
  pnn::v1::RegisterWorkerResponse response;
  const grpc::Status status = Invoke([&](grpc::ClientContext* context) {
    return stub_->RegisterWorker(context, request, &response);
  });
  if (!SleepFor(0)) return false;
  if (!status.ok()) {
    if (!state.reported_unreachable) {
      LogLine(absl::StrCat("cannot register with coordinator ",
                           options_.coordinator, " (", Describe(status),
                           "); retrying with backoff up to ",
                           options_.max_retry_ms, " ms"));
      state.reported_unreachable = true;
    }
    // Up to 20% jitter, so workers of a restarted coordinator do not all
    // come back in the same instant.
    const int64_t wait =
        state.retry_ms +
        static_cast<int64_t>(state.jitter() % (state.retry_ms / 5 + 1));
    if (!SleepFor(wait)) return false;
    state.retry_ms =
        std::min<int64_t>(state.retry_ms * 2, options_.max_retry_ms);
    return true;
  }
  state.id = response.worker_id();
  state.interval_ms = response.heartbeat_interval_ms() > 0
                          ? response.heartbeat_interval_ms()
                          : options_.default_heartbeat_interval_ms;
  state.retry_ms = options_.initial_retry_ms;
  state.reported_unreachable = false;
  state.reported_heartbeat_error = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    worker_id_ = state.id;
    ++registrations_;
  }
  LogLine(absl::StrCat(state.registered_before ? "re-registered" : "registered",
                       " with coordinator ", options_.coordinator,
                       " as worker ", state.id, " (address ",
                       options_.worker.address(), ", heartbeat every ",
                       state.interval_ms, " ms)"));
  state.registered_before = true;
  return true;
}

bool CoordinatorRegistration::Heartbeat(LoopState& state) {
  if (!SleepFor(state.interval_ms)) return false;
  pnn::v1::HeartbeatRequest request;
  request.set_worker_id(state.id);
  request.set_busy(options_.busy ? options_.busy() : false);
  pnn::v1::HeartbeatResponse response;
  const grpc::Status status = Invoke([&](grpc::ClientContext* context) {
    return stub_->Heartbeat(context, request, &response);
  });
  if (!SleepFor(0)) return false;
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
    LogLine(absl::StrCat("coordinator ", options_.coordinator,
                         " does not know worker ", state.id,
                         " (it restarted or declared this worker lost); "
                         "registering again"));
    state.id.clear();
    std::lock_guard<std::mutex> lock(mutex_);
    worker_id_.clear();
    return true;
  }
  if (!status.ok()) {
    // Keep the id: a coordinator that comes back with its state accepts
    // it, one that lost it answers NOT_FOUND and we register again.
    if (!state.reported_heartbeat_error) {
      LogLine(absl::StrCat("heartbeat to coordinator ", options_.coordinator,
                           " failed (", Describe(status), "); still trying"));
      state.reported_heartbeat_error = true;
    }
  } else if (state.reported_heartbeat_error) {
    LogLine(absl::StrCat("heartbeats to coordinator ", options_.coordinator,
                         " succeed again"));
    state.reported_heartbeat_error = false;
  }
  return true;
}

}  // namespace worker
}  // namespace pnn
