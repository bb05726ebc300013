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

void CoordinatorRegistration::Loop() {
  std::minstd_rand jitter(std::random_device{}());
  int64_t retry_ms = options_.initial_retry_ms;
  int64_t interval_ms = options_.default_heartbeat_interval_ms;
  std::string id;
  bool registered_before = false;
  bool reported_unreachable = false;
  bool reported_heartbeat_error = false;

  for (;;) {
    if (id.empty()) {
      pnn::v1::RegisterWorkerRequest request;
      *request.mutable_worker() = options_.worker;
      pnn::v1::RegisterWorkerResponse response;
      const grpc::Status status = Invoke([&](grpc::ClientContext* context) {
        return stub_->RegisterWorker(context, request, &response);
      });
      if (!SleepFor(0)) return;
      if (!status.ok()) {
        // Log the first failure of a streak, not every retry.
        if (!reported_unreachable) {
          LogLine(absl::StrCat("cannot register with coordinator ",
                               options_.coordinator, " (", Describe(status),
                               "); retrying with backoff up to ",
                               options_.max_retry_ms, " ms"));
          reported_unreachable = true;
        }
        // Up to 20% jitter, so workers of a restarted coordinator do not
        // all come back in the same instant.
        const int64_t wait =
            retry_ms + static_cast<int64_t>(jitter() % (retry_ms / 5 + 1));
        if (!SleepFor(wait)) return;
        retry_ms = std::min<int64_t>(retry_ms * 2, options_.max_retry_ms);
        continue;
      }
      id = response.worker_id();
      interval_ms = response.heartbeat_interval_ms() > 0
                        ? response.heartbeat_interval_ms()
                        : options_.default_heartbeat_interval_ms;
      retry_ms = options_.initial_retry_ms;
      reported_unreachable = false;
      reported_heartbeat_error = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        worker_id_ = id;
        ++registrations_;
      }
      LogLine(absl::StrCat(registered_before ? "re-registered" : "registered",
                           " with coordinator ", options_.coordinator,
                           " as worker ", id, " (address ",
                           options_.worker.address(), ", heartbeat every ",
                           interval_ms, " ms)"));
      registered_before = true;
    }

    if (!SleepFor(interval_ms)) return;
    pnn::v1::HeartbeatRequest request;
    request.set_worker_id(id);
    request.set_busy(options_.busy ? options_.busy() : false);
    pnn::v1::HeartbeatResponse response;
    const grpc::Status status = Invoke([&](grpc::ClientContext* context) {
      return stub_->Heartbeat(context, request, &response);
    });
    if (!SleepFor(0)) return;
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      LogLine(absl::StrCat("coordinator ", options_.coordinator,
                           " does not know worker ", id,
                           " (it restarted or declared this worker lost); "
                           "registering again"));
      id.clear();
      std::lock_guard<std::mutex> lock(mutex_);
      worker_id_.clear();
      continue;
    }
    if (!status.ok()) {
      // Keep the id: a coordinator that comes back with its state accepts
      // it, one that lost it answers NOT_FOUND and we register again.
      if (!reported_heartbeat_error) {
        LogLine(absl::StrCat("heartbeat to coordinator ", options_.coordinator,
                             " failed (", Describe(status), "); still trying"));
        reported_heartbeat_error = true;
      }
    } else if (reported_heartbeat_error) {
      LogLine(absl::StrCat("heartbeats to coordinator ", options_.coordinator,
                           " succeed again"));
      reported_heartbeat_error = false;
    }
  }
}

}  // namespace worker
}  // namespace pnn
